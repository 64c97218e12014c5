"""Tables, paired comparisons and the plot, computed from benchmark rows.

Ratios are always paired (:func:`paired`): the two rows must come from the
same interleaved group (``row['group']``) so that their per-round samples
were taken side by side.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .runtimes import ALL_PATHS, PEER_PATHS
from .stats import RatioSummary, compare_paired


def find_row(rows: Iterable[dict], model: str, path: str, **where) -> Optional[dict]:
    """The timed row of ``model`` and ``path`` (matching ``where``, e.g. batch=1, threads=2)."""
    for row in rows:
        if (row['model'] == model and row['path'] == path and 'samples_ms' in row
                and all(row.get(k) == v for k, v in where.items())):
            return row
    return None


def paired(a: dict, b: dict) -> RatioSummary:
    """Time ratio ``a / b`` of two rows of one interleaved group (below 1: ``a`` is faster)."""
    if a.get('group') != b.get('group'):
        raise ValueError(f"rows of different groups ({a.get('group')!r}, {b.get('group')!r}) "
                         'were not measured interleaved: their ratio is not paired')
    return compare_paired(a['samples_ms'], b['samples_ms'])


def groups(rows: Iterable[dict]) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for row in rows:
        out.setdefault(row.get('group', ''), []).append(row)
    return out


# (A path, B path, what the ratio says) within one model
_SAME_MODEL = (
    ('fused', 'unfused', 'fusing'),
    ('fused_channels_last', 'fused', 'channels_last'),
    ('fused', 'plain_limit', 'overhead over the plain limit'),
    ('fused_channels_last', 'plain_limit_channels_last', 'overhead over the plain limit'),
    ('onnxruntime', 'fused_channels_last', 'onnxruntime vs torch'),
    ('onnxruntime_int8', 'onnxruntime', 'INT8'),
    ('openvino', 'onnxruntime', 'OpenVINO vs onnxruntime'),
    ('openvino_int8', 'onnxruntime', 'OpenVINO INT8 vs onnxruntime'),
)


def comparisons(rows: Sequence[dict]) -> List[dict]:
    """The paired ratios each group offers: within each model, and model vs peer per path."""
    out = []
    for group, members in groups(rows).items():
        timed = {(r['model'], r['path']): r for r in members if 'samples_ms' in r}
        models = list(dict.fromkeys(r['model'] for r in members))
        for model in models:
            for a, b, what in _SAME_MODEL:
                if (model, a) in timed and (model, b) in timed:
                    out.append(_comparison(group, timed[(model, a)], timed[(model, b)], what))
        main = models[0]
        for peer in models[1:]:
            for path in PEER_PATHS:
                if (main, path) in timed and (peer, path) in timed:
                    out.append(_comparison(group, timed[(main, path)], timed[(peer, path)],
                                           f'vs {peer}, same runtime'))
    return out


def _comparison(group: str, a: dict, b: dict, what: str) -> dict:
    return dict(group=group, a_model=a['model'], a_path=a['path'], b_model=b['model'],
                b_path=b['path'], what=what, **paired(a, b).as_dict())


def _model_order(rows: Sequence[dict]) -> List[str]:
    return list(dict.fromkeys(r['model'] for r in rows))


def _settings(rows: Sequence[dict]) -> List[Tuple[int, int]]:
    return sorted({(r['batch'], r.get('threads', 0)) for r in rows})


def markdown(rows: Sequence[dict]) -> str:
    """Median ms (rows: models, columns: paths), peak memory, and the paired ratios."""
    lines = []
    for batch, threads in _settings(rows):
        sub = [r for r in rows if r['batch'] == batch and r.get('threads', 0) == threads]
        paths = [p for p in ALL_PATHS if any(r['path'] == p for r in sub)]
        for title, cell in (('median ms', _ms_cell),
                            ('memory MB, resident + peak during inference', _mb_cell)):
            lines += [f'### batch {batch}, {threads} thread(s): {title}', '',
                      '| model | input | ' + ' | '.join(paths) + ' |',
                      '|---|---|' + '---|' * len(paths)]
            for model in _model_order(sub):
                cells, shape = [], ''
                for path in paths:
                    row = next((r for r in sub if r['model'] == model and r['path'] == path),
                               None)
                    if row is not None:
                        shape = 'x'.join(map(str, row['input'][2:]))
                    cells.append(cell(row))
                lines.append(f'| {model} | {shape} | ' + ' | '.join(cells) + ' |')
            lines.append('')
    cmp = comparisons(rows)
    if cmp:
        lines += ['### Paired time ratios A / B (below 1: A is faster)', '',
                  '| group | A | B | what | A / B | 95% interval | pairs |',
                  '|---|---|---|---|---|---|---|']
        for c in cmp:
            a, b = f"{c['a_model']} `{c['a_path']}`", f"{c['b_model']} `{c['b_path']}`"
            lines.append(f"| {c['group']} | {a} | {b} | {c['what']} | {c['median']:.3f} | "
                         f"{c['low']:.3f}-{c['high']:.3f} | {c['pairs']} |")
        lines.append('')
    failed = [r for r in rows if 'error' in r]
    if failed:
        lines += ['### Paths that failed', '']
        lines += [f"- {r['model']} `{r['path']}`: {r['error']}" for r in failed]
        lines.append('')
    return '\n'.join(lines)


def _ms_cell(row: Optional[dict]) -> str:
    if row is None:
        return ''
    if 'error' in row:
        return 'failed'
    return f"{row['median_ms']:.1f}" if 'median_ms' in row else ''


def _mb_cell(row: Optional[dict]) -> str:
    if row is None or row.get('peak_mb') is None:
        return ''
    resident = row.get('resident_mb')
    return (f"{resident:.0f} + " if resident is not None else '') + f"{row['peak_mb']:.0f}"


def plot(rows: Sequence[dict], path: Optional[str] = None, columns: int = 2):
    """One panel per group (a model, its peers, one batch size and thread count): bars
    from zero on a linear axis, each value printed, its 95% interval as a whisker;
    input size, batch and threads in each panel's title.

    Returns the matplotlib figure (saved to ``path`` when given).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    timed = [r for r in rows if 'median_ms' in r]
    panels = groups(timed)
    if not panels:
        raise ValueError('no timed rows to plot')
    columns = min(columns, len(panels))
    n_rows = -(-len(panels) // columns)
    heights = [len({r['path'] for r in members}) for members in panels.values()]
    height_in = 1.2 + 0.45 * max(heights) * n_rows
    fig, axes = plt.subplots(n_rows, columns, squeeze=False, figsize=(6.5 * columns, height_in))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for ax, (group, members) in zip(axes.flat, panels.items()):
        paths = [p for p in ALL_PATHS if any(r['path'] == p for r in members)]
        models = _model_order(members)
        height = 0.8 / len(models)
        for j, model in enumerate(models):
            label = model
            for row in (r for r in members if r['model'] == model):
                y = paths.index(row['path']) + (j - (len(models) - 1) / 2) * height
                value, (low, high) = row['median_ms'], row['ci_ms']
                ax.barh(y, value, height=height * 0.95, color=colors[j % len(colors)],
                        xerr=[[value - low], [high - value]], ecolor='0.25', capsize=2,
                        label=label)
                label = None  # one legend entry per model
                ax.text(high, y, f' {value:.1f}', va='center', ha='left', fontsize=7)
        top = max(r['ci_ms'][1] for r in members)
        ax.set_xscale('linear')
        ax.set_xlim(0, top * 1.2)
        ax.set_yticks(range(len(paths)))
        ax.set_yticklabels(paths, fontsize=7)
        ax.invert_yaxis()
        first = members[0]
        ax.set_title(f"{models[0]}: input {'x'.join(map(str, first['input'][2:]))}, "
                     f"batch {first['batch']}, {first.get('threads', '?')} thread(s)", fontsize=8)
        ax.set_xlabel('median ms (bars from 0; whiskers: 95% interval)', fontsize=7)
        ax.tick_params(axis='x', labelsize=7)
        ax.grid(axis='x', alpha=0.3)
        if len(models) > 1:
            ax.legend(fontsize=6, loc='lower right')
    fig.suptitle('CPU latency per inference path (median of interleaved rounds)', fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height_in))  # room for the title
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
