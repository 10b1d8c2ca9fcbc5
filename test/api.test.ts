// The public API is a contract: the declarations users compile against (dist/index.d.ts and
// what it reaches) must match the committed report api/ring-attention.api.md, made by API
// Extractor. A change to an exported signature fails here until the report is regenerated
// (`npm run api`) and committed beside it, so that no change to the API goes unreviewed. API
// Extractor also refuses a type that the API uses but the entry point does not export.
import { Extractor, ExtractorConfig, type ExtractorMessage } from '@microsoft/api-extractor';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');

it('the exported declarations match the committed API report', () => {
  // npm test compiles first; run alone, a stale dist/ would compare the wrong declarations.
  expect(existsSync(join(root, 'dist', 'index.d.ts')), 'dist/index.d.ts (run npx tsc -p tsconfig.json first)').toBe(true);
  const messages: string[] = [];
  const result = Extractor.invoke(ExtractorConfig.loadFileAndPrepare(join(root, 'api-extractor.json')), {
    localBuild: false,
    messageCallback: (m: ExtractorMessage) => {
      if (m.logLevel === 'error' || m.logLevel === 'warning') messages.push(m.formatMessageWithLocation(root));
      m.handled = true;
    },
  });
  const hint = 'the public API changed: review the difference, then run `npm run api` and commit api/ring-attention.api.md';
  expect(result.apiReportChanged, hint).toBe(false);
  expect(messages, 'API Extractor warnings').toEqual([]);
  expect(result.succeeded).toBe(true);
}, 60_000);
