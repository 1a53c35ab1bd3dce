"""mmdeploy: train balanced audio-video classifiers (MLB), export them, and classify video files."""
__version__ = "0.1.0"
