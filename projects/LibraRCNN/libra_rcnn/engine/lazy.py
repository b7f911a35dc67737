"""Train and evaluate from Detectron2 LazyConfigs (Python configs), as ``tools/lazyconfig_train_net.py``.

    python lazy_train_net.py --config-file configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.py
    python lazy_train_net.py --config-file CONFIG --eval-only train.init_checkpoint=model_final.pth
    python lazy_train_net.py --config-file CONFIG --num-gpus 8 --resume dataloader.train.total_batch_size=64

Flags are Detectron2's (``default_argument_parser``); overrides are ``key=value`` on the config's
tree (``LazyConfig.apply_overrides``). The config holds ``model``, ``dataloader.{train,test,
evaluator}``, ``optimizer``, ``lr_multiplier`` and ``train`` as in Detectron2's model zoo
``common/train.py``. As with ``train_net.py``: a missing config file or a bad override fails in
one line before any work starts, ``train.device = "cuda"`` falls back to the CPU where there is
no GPU (and AMP is then off), checkpoints are written atomically, a resumed run's ``metrics.json`` holds each
iteration once, and ``--num-gpus N`` also runs N processes on a CPU-only machine.
"""
import copy
import logging
import os

from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, default_setup, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import check_weights_file, load_lazy_config
from .checkpoint import AtomicCheckpointer
from .checks import check_model_builds, check_world_size
from .cli import argument_parser, launch_checked, resume_under_launcher
from .hooks import LossCurves, truncate_metrics
from ..data.exact_order import build_exact_train_loader
from .launcher import check_cpus, requeue_hook
from .position import TrainingPosition, resumable_writers
from .trainer import ddp_kwargs

__all__ = ["check_config", "do_test", "do_train", "main", "cli"]

logger = logging.getLogger("libra_rcnn")


def check_config(cfg, args) -> None:
    """Check, before any work starts, what would otherwise fail late.

    - the total batch splits over the processes;
    - ``--eval-only`` has a ``train.init_checkpoint``; a local checkpoint file exists;
    - the model builds (on the meta device, so this costs no memory): an override of a key
      that no constructor takes, or a value that a component refuses, fails here.

    Raises:
        InputError: naming the key, file or value.
    """
    if not args.eval_only and "total_batch_size" in cfg.dataloader.train:
        check_world_size(cfg.dataloader.train.total_batch_size, "dataloader.train.total_batch_size", args)
    check_weights_file(cfg.train.init_checkpoint, "train.init_checkpoint", "--eval-only" if args.eval_only else "")
    check_model_builds(lambda: instantiate(cfg.model), "model: ")


def _ddp(model, cfg):
    """Detectron2's ``create_ddp_model`` with the config's ``train.ddp`` arguments (and none of
    the device ids that DDP refuses for a CPU model: :func:`ddp_kwargs`)."""
    return create_ddp_model(model, **cfg.train.ddp, **ddp_kwargs(cfg.train.device))


def do_test(cfg, model):
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator``; returns the metrics."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def _train_loader(spec):
    """``dataloader.train`` instantiated; Detectron2's ``build_detection_train_loader`` with its
    default sampler and collation becomes :func:`build_exact_train_loader` (same arguments), whose
    position a resume restores."""
    target = spec.get("_target_")
    name = target if isinstance(target, str) else f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"
    exact_keys = {"_target_", "dataset", "mapper", "total_batch_size", "aspect_ratio_grouping", "num_workers"}
    if name.endswith("build_detection_train_loader") and set(spec.keys()) - {"sampler", "collate_fn"} <= exact_keys \
            and spec.get("sampler") is None and spec.get("collate_fn") is None:  # fmt: skip
        spec = copy.deepcopy(spec)
        spec._target_ = build_exact_train_loader
        spec.pop("sampler", None)
        spec.pop("collate_fn", None)
    else:
        logger.warning("dataloader.train is %s with its own sampler or arguments: a resume does not restore its "
                       "position", name)  # fmt: skip
    return instantiate(spec)


def do_train(args, cfg):
    """Train ``cfg.model`` for ``train.max_iter`` iterations, with Detectron2's trainer and hooks."""
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = _train_loader(cfg.dataloader.train)
    model = _ddp(model, cfg)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            TrainingPosition(),
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main_process else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            requeue_hook(checkpointer),  # SLURM: checkpoint and requeue on the warning signal
            hooks.PeriodicWriter(resumable_writers(cfg.train.output_dir, cfg.train.max_iter, trainer),
                                 period=cfg.train.log_period)
            if main_process
            else None,
            LossCurves(cfg.train.output_dir) if main_process else None,
        ]
    )
    resume = resume_under_launcher(args, checkpointer)
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # The checkpoint holds the iteration that had just finished.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if start_iter > 0 and main_process:
        kept = truncate_metrics(os.path.join(cfg.train.output_dir, "metrics.json"), start_iter)
        logger.info("Resuming at iteration %d; kept %d lines of metrics.json", start_iter, kept)
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def main(args):
    """Train, or with ``--eval-only`` evaluate ``train.init_checkpoint``; returns the metrics (eval only)."""
    cfg = load_lazy_config(args)
    default_setup(cfg, args)
    setup_logger(output=cfg.train.output_dir, distributed_rank=comm.get_rank(), name="libra_rcnn")
    check_cpus(cfg.dataloader.train.get("num_workers", 0), "dataloader.train.num_workers")
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = _ddp(model, cfg)
        AtomicCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(args, cfg)
    return None


def cli(prog: str = "lazy_train_net.py", argv=None) -> None:
    """Parse Detectron2's command line, check the config, then ``launch`` :func:`main` on every process.

    A failed check (:func:`libra_rcnn.config.load_lazy_config`, :func:`check_config`) prints one line,
    ``prog: error: ...``, and exits with status 2.
    """
    args = argument_parser().parse_args(argv)
    launch_checked(lambda: check_config(load_lazy_config(args), args), main, args, prog, (args,))

