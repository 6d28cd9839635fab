"""Pictures made from the cache and from checkpoints alone (no GPU needed), for
train/visualize.py (the command line) and train/report.py.

drawing.py lays out rows of tiles as PNG/GIF files and colours maps; preview.py shows the
trainer's masks and MAC samples of cached videos; gradcam.py shows what finetuned models look at,
one model or two compared. This package only reads: it must not train, nor write the cache (its
only files are the pictures), nor import train/visualize.py (the command line is built on it).
"""
