"""From a laptop to a GPU VM: plan it, create it, reach it, sync it, stop paying for it.

prices.py  the GPU machines and their hourly prices (a dated table with its source, per region)
plan.py    which GPU type and count fit a run spec (the estimator's per-GPU memory), how long and what it costs
gcloud.py  the gcloud command lines of the book's Google Cloud set-up (5.1.1) and the VM's start-up script
sky.py     the SkyPilot task YAML for any other cloud or a Kubernetes/Slurm cluster
tools.py   running gcloud / sky (argument lists, never a shell), with the errors for missing or unauthenticated CLIs
marker.py  the VMs this product created: the marker on the VM (for the end-of-run stop/delete offer) and the
           local record that `cloud ssh|sync|stop|delete NAME` read
Nothing here is imported by the engine's other wings except marker.py (by the notifications). No credential is
ever written by this package: gcloud and sky keep their own.
"""
