"""Scoring samples, the toy world's way and VBench's.

* :mod:`~dcm.evaluation.samples`: :func:`~dcm.evaluation.samples.score_samples`, the one function
  that turns a set of sampled videos and their prompts into per-video scores and their aggregates
  (the toy world's analytic evaluator, :mod:`dcm.world.metrics`); the trainer's validation curve,
  the teacher's checks and the studies score through it;
* :mod:`~dcm.evaluation.fidelity`: PSNR and SSIM against the teacher's video of the same prompt and seed;
* :mod:`~dcm.evaluation.vbench_runner`: VBench on a folder of samples, and its headline scores;
* :mod:`~dcm.evaluation.vbench_totals`: VBench's own normalisation and weighting (Quality, Semantic, Total);
* :mod:`~dcm.evaluation.vbench_suite`: what each VBench dimension needs, its prompt suite and file names.

The package scores videos and never touches a model, so it sits low in the import layers (above
the toy world only): the trainer and the teacher's probes score with it, and the data layer reads
VBench's prompt suite from it. This file imports nothing, so that ``vbench_suite`` stays free of
torch.
"""
