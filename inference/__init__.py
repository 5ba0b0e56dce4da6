"""The inference runtime: a folder of videos in, submission.csv out. One module per stage, in the order data
flows: video (read frames) -> faces (detect) -> tracks (link) -> crops -> classify -> pipeline (wires them, batches
across videos) -> budget (time) -> journal (resume) -> submission (write) -> cli (the command line).

Importing any module has no side effects: no search of the Kaggle input, no install, no change to sys.path.
"""
