"""Performance of the project's detectors and components, side by side with their baselines.

Run ``python -m benchmarks`` from the repository root (see benchmarks/README.md). Modules:
:mod:`.detectors` (training step and inference of baseline / Libra pairs), :mod:`.sampler`
and :mod:`.reference_sampler` (RoI sampling vs Detectron2's and mmdetection's samplers),
:mod:`.bfp` (the balanced feature pyramid and its non-local block), :mod:`.report` (targets
and Markdown), :mod:`.run` (the command).
"""
