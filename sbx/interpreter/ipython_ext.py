"""IPython extension loaded into every Python kernel (installed in the
image as the module ``sbx_ipython``): matplotlib figures get a ``chart``
representation (the data the SDKs parse as ``Chart``), and the service's
per-cell environment variables are set and restored through it, leaving
nothing in the user's namespace."""

from __future__ import annotations

import os
from typing import Any

CHART_MIME = "application/vnd.sbx.chart+json"

_saved: dict[str, str | None] = {}


def set_sandbox_env(env: dict[str, str]) -> None:
    os.environ.update(env)


def set_cell_env(env: dict[str, str]) -> None:
    _saved.clear()
    for key, value in env.items():
        _saved[key] = os.environ.get(key)
        os.environ[key] = value


def restore_cell_env() -> None:
    for key, old in _saved.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    _saved.clear()


def warm() -> None:
    """Import what most cells use and draw one chart, so that the first
    cell of a sandbox made from the template snapshot pays for none of it
    (the matplotlib font cache is built into the image)."""
    import io

    import matplotlib.pyplot as plt
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    from IPython import get_ipython

    fig = plt.figure()
    plt.plot([0, 1, 2], [0, 1, 4], label="warm")
    plt.title("warm")
    get_ipython().display_formatter.format(fig)
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def load_ipython_extension(ip: Any) -> None:
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    class ChartFormatter(BaseFormatter):  # type: ignore[misc]
        format_type = Unicode(CHART_MIME)
        print_method = ObjectName("_repr_sbx_chart_")
        _return_type = dict

        def pop(self, typ: Any, default: Any = None) -> Any:
            # IPython's pylabtools pops Figure from every formatter when the
            # inline backend starts (on `import matplotlib.pyplot`): ours stays.
            if getattr(typ, "__name__", None) == "Figure":
                return default
            return super().pop(typ, default)

    # Figures are drawn once, as savefig does by default, not cropped to
    # "tight" (which draws them twice): half the time of a chart cell. PNGs
    # are compressed fast (a third bigger, 15 % less time).
    ip.config.InlineBackend.print_figure_kwargs = {
        "bbox_inches": None, "pil_kwargs": {"compress_level": 1}}
    formatter = ChartFormatter(parent=ip.display_formatter)
    ip.display_formatter.formatters[CHART_MIME] = formatter
    # Only active types are computed by display(); the list was fixed at start.
    if CHART_MIME not in ip.display_formatter.active_types:
        ip.display_formatter.active_types = [*ip.display_formatter.active_types, CHART_MIME]
    # By name: matplotlib is imported only when the user's code does.
    formatter.for_type_by_name("matplotlib.figure", "Figure", figure_chart)


# --- charts -----------------------------------------------------------------

def _num(value: Any) -> Any:
    """A JSON number or string for a data value (dates come as floats from
    matplotlib; numpy scalars become Python ones)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def _scale(ax: Any, which: str) -> str:
    name = str(ax.get_xscale() if which == "x" else ax.get_yscale())
    axis = ax.xaxis if which == "x" else ax.yaxis
    conv = type(axis.get_converter()).__name__ if hasattr(axis, "get_converter") \
        else type(getattr(axis, "converter", None)).__name__
    if "Date" in conv:
        return "datetime"
    if "StrCategory" in conv:
        return "categorical"
    return name


def _axis_common(ax: Any) -> dict[str, Any]:
    return {
        "title": ax.get_title() or None,
        "x_label": ax.get_xlabel() or None,
        "y_label": ax.get_ylabel() or None,
        "x_unit": None,
        "y_unit": None,
    }


def _ticks(ax: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for which in ("x", "y"):
        ticks = ax.get_xticks() if which == "x" else ax.get_yticks()
        labels = ax.get_xticklabels() if which == "x" else ax.get_yticklabels()
        out[f"{which}_ticks"] = [_num(t) for t in ticks]
        out[f"{which}_tick_labels"] = [lbl.get_text() for lbl in labels]
        out[f"{which}_scale"] = _scale(ax, which)
    return out


def _label(artist: Any, index: int) -> str:
    label = str(artist.get_label() or "")
    return label if label and not label.startswith("_") else f"series {index}"


def axes_chart(ax: Any) -> dict[str, Any]:
    """One Axes as a chart: line, scatter, bar, pie or box_and_whisker by
    what it holds; unknown otherwise."""
    from matplotlib.collections import PathCollection
    from matplotlib.patches import Rectangle, Wedge

    common = _axis_common(ax)
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    if wedges:
        texts = [t.get_text() for t in ax.texts]
        elements = []
        for i, w in enumerate(wedges):
            label = texts[2 * i] if len(texts) >= 2 * len(wedges) else (
                texts[i] if i < len(texts) else _label(w, i))
            elements.append({"label": label, "angle": abs(w.theta2 - w.theta1),
                             "radius": w.r})
        return {"type": "pie", "title": common["title"], "elements": elements}
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    if bars and ax.containers:
        elements = []
        ticklabels = {round(float(t), 6): lbl.get_text()
                      for t, lbl in zip(ax.get_xticks(), ax.get_xticklabels(), strict=False)}
        for ci, container in enumerate(ax.containers):
            group = _label(container, ci)
            for rect in getattr(container, "patches", []):
                center = rect.get_x() + rect.get_width() / 2
                label = ticklabels.get(round(float(center), 6)) or _num(center)
                elements.append({"label": str(label), "group": group,
                                 "value": _num(rect.get_height())})
        return {"type": "bar", **common, "elements": elements}
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    lines = list(ax.get_lines())
    if scatters and not lines:
        elements = [{"label": _label(c, i),
                     "points": [[_num(x), _num(y)] for x, y in c.get_offsets()]}
                    for i, c in enumerate(scatters)]
        return {"type": "scatter", **common, **_ticks(ax), "elements": elements}
    if lines:
        elements = [{"label": _label(ln, i),
                     "points": [[_num(x), _num(y)]
                                for x, y in zip(ln.get_xdata(), ln.get_ydata(), strict=False)]}
                    for i, ln in enumerate(lines)]
        return {"type": "line", **common, **_ticks(ax), "elements": elements}
    return {"type": "unknown", "title": common["title"], "elements": []}


def figure_chart(fig: Any) -> dict[str, Any] | None:
    axes = [ax for ax in fig.get_axes() if ax.get_visible()]
    if not axes:
        return None
    if len(axes) == 1:
        return axes_chart(axes[0])
    suptitle = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else None
    return {"type": "superchart", "title": suptitle,
            "elements": [axes_chart(ax) for ax in axes]}
