import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // CI prints every test, so a skipped suite shows the reason in its title.
    reporters: process.env.CI ? ['verbose'] : ['default'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
