"""DDP on CPU for mmengine 0.10.7, whose Runner always passes ``device_ids=[LOCAL_RANK]``."""
from mmengine.model import MMDistributedDataParallel


class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel that drops ``device_ids`` when the model is on the CPU (gloo)."""

    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)
