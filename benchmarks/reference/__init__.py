"""The reference harness: mmdetection 3.3 trained and evaluated on FashionScenes on the CPU.

- :mod:`.env`: the reference environment (``benchmarks/setup_reference_env.sh``) on ``sys.path``,
  with torchvision standing in for the compiled ops of mmcv that training and testing call;
- ``configs/``: mmengine configs that mirror ``configs/FashionScenes/`` key by key;
- :mod:`.train`: one resumable run (train, then mmdetection's ``CocoMetric``);
- :mod:`.compare`: a trained run converted to Detectron2 and evaluated by ``train_net.py``;
- :mod:`.table`: the side-by-side tables of docs/reports/reference_training.md.

Run with the project's interpreter (``.venv/bin/python -m benchmarks.reference.train ...``).
"""
