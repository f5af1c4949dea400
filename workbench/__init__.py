"""MeanFlow Workbench: train, ablate, search and report on one-step MeanFlow models.

The packages are the pipeline, each importing only those below it (tests/test_layers.py):

    cli/        `wb`: Typer only; each command calls one library function
    schedule/   cells and trials over worker processes: the queue interface and its one loop, the ablation
                and search queues, the launcher, one run of a cell (with its cell folder), calibration, GPUs
    report/     readers only: store -> DataFrame -> markdown and PNG pages
    stores/     every MLflow call and the Optuna vocabulary (no torch)
    study/      the TOML files researchers write -> validated studies, search spaces, calibration plans
    evaluate/   scores and pictures of a trained model: the metric-name grammar, toy scores, FID
    run/        one training run, what `wb train` does (no MLflow, no Optuna)
    config/     the typed run config (pydantic); data.py: the data sets
    meanflow/   the science, pure torch: objectives, d/dt u, time samplers, samplers, networks, exact flows
"""
