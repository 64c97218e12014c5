"""Fuse a trained checkpoint offline: writes a fused checkpoint and a config that builds the plain network.

    python tools/reparameterize.py CONFIG CHECKPOINT OUT_DIR [--force] [--verify]
"""
import argparse
import os
import os.path as osp

import torch

import mmrep  # noqa: F401
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.registry import MODELS

from mmrep.checkpoint import NotACheckpointError, UntrustedCheckpointError
from mmrep.engine.deploy_utils import CheckpointMismatchError, load_checked, save_fused


def parse_args():
    parser = argparse.ArgumentParser(description='Fuse (re-parameterize) a trained model')
    parser.add_argument('config', help='the training config')
    parser.add_argument('checkpoint', help='the unfused checkpoint')
    parser.add_argument('out_dir', help='where to write <checkpoint>_fused.pth and <config>_fused.py')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
    parser.add_argument('--verify', action='store_true',
                        help='check that fused and unfused give the same outputs on a random input')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args()


def build_model(cfg: Config) -> torch.nn.Module:
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return MODELS.build(cfg.model)


def main(argv=None):
    args = parse_args() if argv is None else argv
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    stem = osp.splitext(osp.basename(args.checkpoint))[0]
    ckpt_out = osp.join(args.out_dir, f'{stem}_fused.pth')
    cfg_out = osp.join(args.out_dir, f'{osp.splitext(osp.basename(args.config))[0]}_fused.py')
    for out in (ckpt_out, cfg_out):
        if osp.abspath(out) in (osp.abspath(args.checkpoint), osp.abspath(args.config)):
            raise SystemExit(f'refusing to overwrite the input {out}; choose another OUT_DIR')
        if osp.exists(out) and not args.force:
            raise SystemExit(f'{out} exists; pass --force to overwrite it')
    model = build_model(cfg)
    try:
        source = load_checked(model, args.checkpoint)
    except (CheckpointMismatchError, NotACheckpointError, UntrustedCheckpointError) as err:
        raise SystemExit(f'tools/reparameterize.py: {err}')
    model.eval()
    os.makedirs(args.out_dir, exist_ok=True)
    save_fused(model, cfg, ckpt_out, cfg_out, meta=dict(source_checkpoint=args.checkpoint),
               source_meta=source.get('meta') or {},
               overwrite=args.force)
    print(f'wrote {ckpt_out}\nwrote {cfg_out}')
    if args.verify:
        fused = build_model(Config.fromfile(cfg_out))
        load_checked(fused, ckpt_out)
        fused.eval()
        x = torch.rand(1, 3, 256, 320)
        with torch.no_grad():
            a, b = model.extract_feat(x), fused.extract_feat(x)
        diff = max((p - q).abs().max().item() / max(p.abs().max().item(), 1e-6)
                   for p, q in zip(a, b))
        print(f'max relative feature difference fused vs unfused: {diff:.2e}')
        if diff > 1e-4:
            raise SystemExit(f'fused model differs by {diff:.2e} (> 1e-4)')


if __name__ == '__main__':
    main()
