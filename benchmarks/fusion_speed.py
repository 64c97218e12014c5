"""Unfused vs fused CPU latency, parameters and BN count of each backbone. Prints a table.

    .venv/bin/python benchmarks/fusion_speed.py [--size 320 320] [--repeats 5]
"""
import argparse
import time

import torch

import mmrep
from mmrep.models.backbones.orepa_resnet import OREPAResNet
from mmrep.models.backbones.repghostnet import RepGhostNet
from mmrep.models.backbones.replknet import RepLKNet
from mmrep.models.backbones.repvgg import RepVGG

BACKBONES = {
    'RepVGG-A0': lambda: RepVGG(arch='A0'),
    'RepVGG-B1g4': lambda: RepVGG(arch='B1g4'),
    'RepGhostNet-1.0x': lambda: RepGhostNet(widen_factor=1.0),
    'OREPA-ResNet-18': lambda: OREPAResNet(depth=18),
    'OREPA-ResNet-50': lambda: OREPAResNet(depth=50),
    'RepLKNet-31B': lambda: RepLKNet(arch='31B'),
}


def latency_ms(model, x, repeats):
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--size', type=int, nargs=2, default=(320, 320))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--only', nargs='*', help='names to run')
    args = parser.parse_args()
    x = torch.rand(1, 3, *args.size)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{args.size[0]}x{args.size[1]}')
    print(f'{"backbone":18} {"params unfused":>15} {"params fused":>13} {"BN fused":>9} '
          f'{"ms unfused":>11} {"ms fused":>9} {"speed-up":>9}')
    for name, build in BACKBONES.items():
        if args.only and name not in args.only:
            continue
        model = build().eval()
        fused = mmrep.reparameterize_model(model)
        params = sum(p.numel() for p in model.parameters())
        fused_params = sum(p.numel() for p in fused.parameters())
        bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
        slow, fast = latency_ms(model, x, args.repeats), latency_ms(fused, x, args.repeats)
        print(f'{name:18} {params / 1e6:14.2f}M {fused_params / 1e6:12.2f}M {bn:9d} '
              f'{slow:11.1f} {fast:9.1f} {slow / fast:8.2f}x')


if __name__ == '__main__':
    main()
