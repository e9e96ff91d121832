"""Where the benchmarks find the repository and the corpus nets: ../shared beside the checkout, or shared/ inside it
on machines that only get the repository (the GPU machine)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "..", "shared", "corpus")
if not os.path.isdir(CORPUS):
    CORPUS = os.path.join(ROOT, "shared", "corpus")
