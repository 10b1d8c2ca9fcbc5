import * as ra from 'ring-attention';
import { check } from './check.mjs';

console.log(JSON.stringify(await check(ra)));
