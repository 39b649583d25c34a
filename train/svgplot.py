"""A small line-plot writer producing standalone SVG (no matplotlib needed)."""
import math
from xml.sax.saxutils import escape

COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
DASHES = ["", "6,3", "2,3", "8,3,2,3"]


def _ticks_log2(lo, hi):
    a, b = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = max(1, -(-(b - a) // 12))
    return [2.0 ** k for k in range(a, b + 1, step)]


def _ticks_lin(lo, hi, n=6):
    span = hi - lo or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-12:
        out.append(round(t, 10))
        t += step
    return out


def _label(v, log2x):
    if log2x:
        v = int(v)
        return f"{v // 1024}k" if v >= 1024 else str(v)
    return f"{v:g}"


def line_plot(path, series, title, xlabel, ylabel, log2x=False, vlines=(), ylog=False,
              width=760, height=460, hlines=(), yspan=None):
    """series: list of dicts {label, points [(x, y)], color?, dash?}.
    vlines: list of (x, label) drawn dashed (e.g. the training context); hlines: (y, label)
    likewise across. yspan (lo, hi): the y axis shows at least this range (so ratios near
    1 are not blown up to fill the plot)."""
    ml, mr, mt, mb = 70, 190, 40, 55
    pw, ph = width - ml - mr, height - mt - mb
    xs = [x for s in series for x, _ in s["points"]] + [v for v, _ in vlines]
    ys = [y for s in series for _, y in s["points"] if y == y and y not in (math.inf, -math.inf)]
    ys += [v for v, _ in hlines] + (list(yspan) if yspan and ys else [])
    if not xs or not ys:
        raise ValueError("nothing to plot")
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if ylog:
        y0, y1 = y0 / 1.1, y1 * 1.1
    else:
        pad = (y1 - y0) * 0.08 or 0.5
        y0, y1 = max(0.0, y0 - pad), y1 + pad
    fx = (lambda v: math.log2(v)) if log2x else (lambda v: v)
    fy = (lambda v: math.log(v)) if ylog else (lambda v: v)
    X = lambda v: ml + (fx(v) - fx(x0)) / ((fx(x1) - fx(x0)) or 1) * pw  # noqa: E731
    Y = lambda v: mt + ph - (fy(v) - fy(y0)) / ((fy(y1) - fy(y0)) or 1) * ph  # noqa: E731
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{ml + pw / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
         f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>']
    xt = _ticks_log2(x0, x1) if log2x else _ticks_lin(x0, x1)
    for t in xt:
        if x0 <= t <= x1:
            o.append(f'<line x1="{X(t):.1f}" y1="{mt}" x2="{X(t):.1f}" y2="{mt + ph}" stroke="#eee"/>')
            o.append(f'<text x="{X(t):.1f}" y="{mt + ph + 16}" text-anchor="middle">{_label(t, log2x)}</text>')
    if ylog:
        yt = [v for v in (1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 1000,
                          2000, 5000, 10000) if y0 <= v <= y1]
    else:
        yt = _ticks_lin(y0, y1)
    for t in yt:
        o.append(f'<line x1="{ml}" y1="{Y(t):.1f}" x2="{ml + pw}" y2="{Y(t):.1f}" stroke="#eee"/>')
        o.append(f'<text x="{ml - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for v, lab in hlines:
        o.append(f'<line x1="{ml}" y1="{Y(v):.1f}" x2="{ml + pw}" y2="{Y(v):.1f}" stroke="#555" '
                 f'stroke-dasharray="2,4"/>')
        o.append(f'<text x="{ml + pw - 4}" y="{Y(v) - 4:.1f}" text-anchor="end" fill="#555">'
                 f'{escape(lab)}</text>')
    for v, lab in vlines:
        o.append(f'<line x1="{X(v):.1f}" y1="{mt}" x2="{X(v):.1f}" y2="{mt + ph}" stroke="#555" '
                 f'stroke-dasharray="4,4"/>')
        o.append(f'<text x="{X(v) + 4:.1f}" y="{mt + 14}" fill="#555">{escape(lab)}</text>')
    for i, s in enumerate(series):
        col = s.get("color", COLORS[i % len(COLORS)])
        dash = s.get("dash", "")
        pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s["points"])
        o.append(f'<polyline points="{pts}" fill="none" stroke="{col}" stroke-width="2"'
                 + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        for x, y in s["points"]:
            o.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{col}"/>')
        ly = mt + 10 + 20 * i
        o.append(f'<line x1="{ml + pw + 12}" y1="{ly}" x2="{ml + pw + 40}" y2="{ly}" stroke="{col}" '
                 f'stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        o.append(f'<text x="{ml + pw + 46}" y="{ly + 4}">{escape(s["label"])}</text>')
    o.append(f'<text x="{ml + pw / 2}" y="{height - 12}" text-anchor="middle">{escape(xlabel)}</text>')
    o.append(f'<text x="16" y="{mt + ph / 2}" text-anchor="middle" '
             f'transform="rotate(-90 16 {mt + ph / 2})">{escape(ylabel)}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")
