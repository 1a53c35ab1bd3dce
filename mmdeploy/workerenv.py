"""Imported first by the decode workers' forkserver (`mmdeploy.preload.PRELOAD`), never by anything else.

Each decode worker runs one file at a time on one core (a torch that a job imports there takes one
thread from OMP_NUM_THREADS too), and features are numpy (`mmdeploy.numpy_features`):
their small matrix products slow down many times over when OpenBLAS (or an OpenMP runtime) starts a thread
per core in every worker, on cores that the other workers and the model already use. So the forkserver
asks for one thread before numpy (or anything that loads a BLAS) is imported; the workers fork from it.
"""
import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"
