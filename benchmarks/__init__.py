"""Speed, memory and FLOPs of the backbones against resolution (``tools/benchmark.py``,
``tools/flops.py``); analysis code, kept out of the model package ``backbones``.

- ``workloads``: what is measured: timm models given as ``name:key=value`` specs, and the
  attention ops alone; their FLOPs, counted on the 'meta' device.
- ``measure``: one measurement ("job") inside a worker process: timing, peak memory, profile.
- ``suite``: the parent side: jobs, one fresh worker subprocess per job, budgets and guards.
- ``report``: tables, plots and the JSON records.
- ``cli``: the command line of ``tools/benchmark.py`` (model and op modes).
- ``det_step``: ``--mode det-step``, the Lightning detection step against mmengine's Runner
  (imports MM and Lightning; only that mode loads it).
- ``flops``: parameter and multiply-add counting with torch's FlopCounterMode.
- ``task`` / ``task_report``: ``--mode seg`` / ``det``, whole UperNet and Mask R-CNN models from
  MM configs against the toolboxes' Swin-T (comparison configs in ``configs/``), the time split
  into backbone / neck / heads, pair tables with the crossover size and plots (MM is imported
  only by these jobs).

Pure torch + timm except ``det_step`` and the ``task`` jobs (matplotlib only for plots).
"""
