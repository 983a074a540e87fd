"""The demo and the scheduler stand-ins (Slurm, Ray, Kubernetes) it and the tests share."""
