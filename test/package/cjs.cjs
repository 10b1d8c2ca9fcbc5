// CommonJS consumers load the ES module through require() (Node >= 20.19).
const ra = require('ring-attention');

import('./check.mjs').then(({ check }) => check(ra)).then((r) => console.log(JSON.stringify(r)));
