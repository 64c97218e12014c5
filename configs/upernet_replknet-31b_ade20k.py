# UPerNet with RepLKNet-31B on ADE20K 512x512, 160k iterations, the RepLKNet
# paper's recipe: AdamW lr 2e-4, weight decay 0.05 (none on norms), 1500-iter
# linear warm-up then poly decay, drop path 0.5, raw stage outputs (the official
# recipe normalizes them for RepLKNet-XL only: norm_intermediate_features=True there),
# batch 16 (4 GPUs x 4 images). RepDeployHook fuses the large kernels before testing.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='RepLKNet',
        arch='31B',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.5,
        norm_intermediate_features=False,  # official 31B recipe; True only for XL
        norm_cfg=norm_cfg,
        # ImageNet weights: RepLKNet-31B pretrained on ImageNet-22k and fine-tuned on 1k at
        # 384 px, the highest published top-1 of the arch (85.99, mmpretrain's copy of the
        # official weights; official 86.0, Google Drive only; timm has none). The official
        # ADE20K figures: 49.9 mIoU from the 1k weights, 51.5 from the 22k ones.
        init_cfg=dict(type='Pretrained', checkpoint='https://download.openmmlab.com/'
                      'mmclassification/v0/replknet/'
                      'replknet-31B_in21k-pre_3rdparty_in1k-384px_20221118-76c92b24.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150),
    auxiliary_head=dict(in_channels=512, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

custom_hooks = [dict(type='RepDeployHook')]
