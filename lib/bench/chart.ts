// One SVG line chart per suite, drawn by Vega-Lite (compiled to Vega, rendered headless).
// Vega is an optional peer dependency: a clone has it (devDependencies); an installed
// package without it still writes JSON and CSV and says how to get the chart.

export interface ChartSpec<R> {
  title: string;
  x: { title: string; value: (row: R) => number; log2?: boolean };
  y: { title: string; value: (row: R) => number | null; format?: string };
  /** Rows with the same series label form one line. */
  series: (row: R) => string;
  /** A horizontal reference line (a target), with its label. */
  rule?: { y: number; label: string };
}

interface VegaModules {
  vega: typeof import('vega');
  compile: typeof import('vega-lite').compile;
}

async function loadVega(): Promise<VegaModules | string> {
  try {
    const [vega, vl] = await Promise.all([import('vega'), import('vega-lite')]);
    return { vega, compile: vl.compile };
  } catch (e) {
    return `charts need the packages vega and vega-lite (npm install vega vega-lite): ${(e as Error).message.split('\n')[0]}`;
  }
}

/** The chart as SVG text, or why it was skipped. */
export async function renderChart<R>(spec: ChartSpec<R>, rows: R[]): Promise<string | { skipped: string }> {
  const values = rows
    .map((r) => ({ x: spec.x.value(r), y: spec.y.value(r), series: spec.series(r) }))
    .filter((p) => p.y !== null && Number.isFinite(p.y));
  if (values.length === 0) return { skipped: 'no measured points to draw' };
  const loaded = await loadVega();
  if (typeof loaded === 'string') return { skipped: loaded };
  const line = {
    data: { values },
    mark: { type: 'line' as const, point: true },
    encoding: {
      // log2 axes tick at the measured points (powers of two), not at log10's 1-2-5
      x: { field: 'x', type: 'quantitative' as const, title: spec.x.title,
        ...(spec.x.log2 ? { scale: { type: 'log' as const, base: 2 }, axis: { values: [...new Set(values.map((p) => p.x))].sort((a, b) => a - b) } } : {}) },
      y: { field: 'y', type: 'quantitative' as const, title: spec.y.title, ...(spec.y.format ? { axis: { format: spec.y.format } } : {}) },
      color: { field: 'series', type: 'nominal' as const, title: null },
    },
  };
  const rule = spec.rule && {
    data: { values: [{ y: spec.rule.y, label: spec.rule.label }] },
    layer: [
      { mark: { type: 'rule' as const, strokeDash: [4, 4], color: 'gray' }, encoding: { y: { field: 'y', type: 'quantitative' as const } } },
      { mark: { type: 'text' as const, align: 'left' as const, dx: 4, dy: -6, color: 'gray' },
        encoding: { y: { field: 'y', type: 'quantitative' as const }, x: { value: 0 }, text: { field: 'label' } } },
    ],
  };
  const vl = { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', title: spec.title, width: 560, height: 320,
    layer: rule ? [line, rule] : [line] };
  const view = new loaded.vega.View(loaded.vega.parse(loaded.compile(vl as never).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
