"""The GPU machines a plan chooses from and what they cost by the hour, with the table's date and source.

Source: SkyPilot's public catalog of Google Cloud prices, `catalogs/v8/gcp/vms.csv` in
github.com/skypilot-org/skypilot-catalog (commit 006059e0f18a), read on 2026-12-06. That catalog lists the
accelerator and the machine type (vCPUs, memory) as separate rows; each price below is their sum, i.e. what
the VM costs an hour while it runs (the boot disk is billed apart, also when stopped). The sum reproduces the
book's figure: g2-standard-24 with two L4s, "about $2 an hour" (5.1.1) = $2.00 in us-central1.
Prices change (spot prices up to once a month): `cloud plan` prints this table's date beside every price, and
`gcloud`'s own console or `sky launch`'s table is the word on today's price.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_DATE = "2026-12-06"
PRICES_SOURCE = ("SkyPilot catalog catalogs/v8/gcp/vms.csv (github.com/skypilot-org/skypilot-catalog, commit "
                 "006059e0f18a): accelerator row + machine-type row")


@dataclass(frozen=True)
class Gpu:
    """A GPU model as Google Cloud, SkyPilot and NVML name it."""

    key: str  # the CLI's name: l4 | a100 | h100
    gcp: str  # the accelerator type gcloud takes: nvidia-l4
    sky: str  # SkyPilot's accelerator name: L4
    nvml: str  # the name NVML reports (the peak-FLOPS table in engine/machine/flops.py matches it)
    memory_bytes: int
    spot_only_below: int = 0  # machine types with fewer GPUs are offered as Spot (or Flex-start) VMs only


@dataclass(frozen=True)
class Machine:
    """One machine type with `count` GPUs, priced in one region."""

    gpu: str  # Gpu.key
    count: int
    machine_type: str  # gcloud --machine-type (A2/A3/G2 come with their GPUs attached)
    region: str
    on_demand: float  # USD an hour
    spot: float  # USD an hour, Spot VM

    def price(self, spot: bool) -> float:
        return self.spot if spot else self.on_demand


MIB = 2**20
# Memory as nvidia-smi reports the total (what a run can have, before the CUDA context the estimator adds): an L4
# sold as 24 GB shows 23,034 MiB.
GPUS: dict[str, Gpu] = {
    "l4": Gpu("l4", "nvidia-l4", "L4", "NVIDIA L4", 23034 * MIB),
    "a100": Gpu("a100", "nvidia-tesla-a100", "A100", "NVIDIA A100-SXM4-40GB", 40960 * MIB),
    # Google's documentation: A3 High machine types with 1, 2 or 4 GPUs come as Spot or Flex-start VMs only.
    "h100": Gpu("h100", "nvidia-h100-80gb", "H100", "NVIDIA H100 80GB HBM3", 81559 * MIB, spot_only_below=8),
}

# (gpu, count, machine type, region, on-demand, spot): accelerator + machine rows of the catalog, summed.
MACHINES: tuple[Machine, ...] = (
    Machine("l4", 1, "g2-standard-4", "us-central1", 0.56004 + 0.14679, 0.2231 + 0.05874),
    Machine("l4", 2, "g2-standard-24", "us-central1", 1.12008 + 0.88075, 0.4462 + 0.35242),
    Machine("l4", 4, "g2-standard-48", "us-central1", 2.24016 + 1.7615, 0.8924 + 0.70483),
    Machine("l4", 1, "g2-standard-4", "us-west1", 0.56004 + 0.14679, 0.2231 + 0.05874),  # the book's region
    Machine("l4", 2, "g2-standard-24", "us-west1", 1.12008 + 0.88075, 0.4462 + 0.35242),
    Machine("l4", 4, "g2-standard-48", "us-west1", 2.24016 + 1.7615, 0.8924 + 0.70483),
    Machine("l4", 1, "g2-standard-4", "europe-west4", 0.58804 + 0.15429, 0.2438 + 0.0715),
    Machine("l4", 2, "g2-standard-24", "europe-west4", 1.17608 + 0.92571, 0.4876 + 0.42898),
    Machine("l4", 4, "g2-standard-48", "europe-west4", 2.35217 + 1.85143, 0.9752 + 0.85795),
    Machine("a100", 1, "a2-highgpu-1g", "us-central1", 2.93391 + 0.73948, 1.4341 + 0.36975),
    Machine("a100", 2, "a2-highgpu-2g", "us-central1", 5.86782 + 1.47895, 2.8682 + 0.7395),
    Machine("a100", 4, "a2-highgpu-4g", "us-central1", 11.73563 + 2.95791, 5.7364 + 1.479),
    Machine("a100", 1, "a2-highgpu-1g", "us-west1", 2.93391 + 0.73948, 1.4341 + 0.36975),
    Machine("a100", 2, "a2-highgpu-2g", "us-west1", 5.86782 + 1.47895, 2.8682 + 0.7395),
    Machine("a100", 4, "a2-highgpu-4g", "us-west1", 11.73563 + 2.95791, 5.7364 + 1.479),
    Machine("h100", 1, "a3-highgpu-1g", "us-central1", 4.20076 + 1.18251, 2.9926 + 0.36117),
    Machine("h100", 2, "a3-highgpu-2g", "us-central1", 8.40152 + 2.36502, 5.9852 + 0.72233),
    Machine("h100", 1, "a3-highgpu-1g", "us-east4", 9.79655 + 1.18251, 2.2356 + 0.26996),
    Machine("h100", 2, "a3-highgpu-2g", "us-east4", 19.5931 + 2.36502, 4.4712 + 0.53992),
)

DEFAULT_REGION = "us-central1"


def regions() -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.region for m in MACHINES))


def machines(gpu: str | None = None, *, region: str | None = None, count: int | None = None) -> list[Machine]:
    """The table's rows for a GPU (all when None), in one region (DEFAULT_REGION's where that has the GPU)."""
    rows = [m for m in MACHINES if gpu is None or m.gpu == gpu]
    if count is not None:
        rows = [m for m in rows if m.count == count]
    if region is not None:
        return [m for m in rows if m.region == region]
    out: list[Machine] = []
    for key in dict.fromkeys(m.gpu for m in rows):  # each GPU in its cheapest listed region
        mine = [m for m in rows if m.gpu == key]
        best = min(dict.fromkeys(m.region for m in mine),
                   key=lambda r: (r != DEFAULT_REGION, min(m.on_demand for m in mine if m.region == r)))
        out.extend(m for m in mine if m.region == best)
    return out


def machine_for(gpu: str, count: int, region: str | None = None) -> Machine | None:
    rows = machines(gpu, region=region, count=count)
    return rows[0] if rows else None
