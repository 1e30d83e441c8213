"""Write MNIST / Fashion-MNIST as an image folder: the same as `prunelab make-imagefolder`."""
import sys

from prunelab.cli import main

sys.exit(main(["make-imagefolder", *sys.argv[1:]]))
