"""The ``compat`` subset: the tests ``pytest -m compat`` runs on every stack (make test-compat).

It covers every layer in a few minutes: fusion exactness for every family,
registry builds of every config, one RetinaNet train/test iteration on
coco128, converter round trips against timm and mmpretrain, safe loading, the
deploy hook, ONNX export checked in onnxruntime, and installing mmrep.

The subset is a list of test ids here rather than markers in the test files,
so that it reads in one place. ``FILE::TEST`` selects the test with every
parameter, ``FILE::TEST[PARAM]`` one parameter set. A listed test that no
longer exists fails the collection (a renamed test must not drop out of the
subset silently).
"""
import os.path as osp

import pytest

MARKER = 'compat'

COMPAT_TESTS = (
    # layer 1-2: fusion math and blocks, every family
    'test_fusion_core.py',
    'test_repvgg.py::test_block_fuses_exactly',
    'test_repvgg.py::test_arch_fuses_exactly',
    'test_repghostnet.py::test_bottleneck_fuses_exactly',
    'test_repghostnet.py::test_every_width_fuses_exactly_without_any_bn_left',
    'test_orepa.py::test_block_fusion_is_exact_idempotent_and_loads_into_deploy',
    'test_orepa.py::test_full_resnet_fuses_exactly_on_non_square_input[18]',
    'test_replknet.py::test_large_kernel_conv_fuses_exactly',
    'test_replknet.py::test_full_arch_builds_and_fuses_exactly[31B-channels0-kernels0-128]',
    'test_rep_pafpn.py::test_repconvn_fuses_exactly',
    'test_rep_pafpn.py::test_retinanet_setting_strides_8_to_128_and_fuses_exactly',
    'test_quant_friendly.py::test_arch_fuses_exactly',
    'test_review_fixes.py::test_low_precision_model_fuses_in_float32',
    # layer 3-4: registries, every config, one RetinaNet iteration on coco128 (trained, the
    # deploy hook writes the fused model, which predicts like the trained one), stock tools
    'test_openmmlab_glue.py::test_models_and_hook_registered_for_mmdet_and_mmseg',
    'test_configs_more.py::test_config_parses_and_builds',
    'test_config_bases.py::test_base_resolves_through_the_mmrep_scope',
    'test_detection_e2e.py::test_one_iteration_learns_and_hook_writes_fused',
    'test_detection_e2e.py::test_fused_config_and_checkpoint_predict_like_trained_model',
    'test_fast_path.py::test_channels_last_keeps_depthwise_outputs',
    'test_stock_tools.py::test_stock_mmdet_tools_train_and_test_downstream_config',
    # converters against the peers
    'test_convert_weights.py::test_timm_repvgg_a0_train_and_deploy',
    'test_convert_weights.py::test_mmpretrain_repvgg_classifier_checkpoint',
    'test_convert_weights.py::test_timm_repghostnet_ema_checkpoint',
    'test_convert_replknet.py::test_mmpretrain_deploy_checkpoint_folds_into_the_fused_model',
    'test_convert_orepa.py::test_converted_training_checkpoint_gives_the_official_features',
    # safe loading: payload refused, mmengine checkpoints and resume
    'test_checkpoint_safety.py',
    'test_detection_e2e.py::test_resume_under_torch_weights_only_default',
    # export through mmdeploy, run in onnxruntime
    'test_export.py::test_retinanet_repghost_static_export',
    'test_export.py::test_repvgg_fcn_segmentation_export',
    'test_export.py::test_mask_rcnn_repvgg_instance_export',
    'test_mmdeploy_fusion.py::test_mmdeploy_torch2onnx_fuses_whole_model'
    '[retinanet_repghost_reppafpn_1x.py]',
    # the stack itself: versions, extras, installing changes nothing
    'test_stack.py',
    'test_setup_env.py',
)


def _split(pattern: str):
    file, _, test = pattern.partition('::')
    return file, test


def _item_key(item) -> tuple:
    """(file name, test id within the file) of a collected test."""
    return osp.basename(str(item.path)), item.nodeid.split('::', 1)[1] if '::' in item.nodeid else ''


def _matches(pattern: str, key: tuple) -> bool:
    file, test = _split(pattern)
    if key[0] != file:
        return False
    return not test or key[1] == test or key[1].startswith(test + '[')


def register(config) -> None:
    config.addinivalue_line(
        'markers', f'{MARKER}: the subset run on every stack (tests/compat_subset.py; make test-compat)')


def mark_items(items, tests_dir: str) -> None:
    """Mark the listed tests ``compat``; fail if a listed test is gone from its file."""
    keys = [(_item_key(item), item) for item in items]
    collected_files = {key[0] for key, _ in keys}
    stale = []
    for pattern in COMPAT_TESTS:
        file, _ = _split(pattern)
        if not osp.isfile(osp.join(tests_dir, file)):
            stale.append(f'{pattern} (no file tests/{file})')
            continue
        matched = [item for key, item in keys if _matches(pattern, key)]
        if not matched and file in collected_files:
            stale.append(f'{pattern} (no such test in tests/{file})')
        for item in matched:
            item.add_marker(MARKER)
    if stale:
        raise pytest.UsageError('tests/compat_subset.py lists tests that do not exist; update '
                                'COMPAT_TESTS: ' + '; '.join(stale))
