"""`cifar-jobs`: the command-line client of the CIFAR training-job API. It speaks HTTP only and
imports nothing of the server (app, jobs, worker, engine, models, torch)."""
