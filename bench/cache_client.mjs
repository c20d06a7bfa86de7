// Save and restore one incompressible file through a running `smith cache serve` with the real @actions/cache
// client (bench/cache.py --client runs it):  node cache_client.mjs <dir with node_modules/@actions/cache> <bytes>
// The caller sets the runner's environment (ACTIONS_RUNTIME_TOKEN, ACTIONS_CACHE_URL or ACTIONS_RESULTS_URL +
// ACTIONS_CACHE_SERVICE_V2, RUNNER_TEMP; LOOPBACK_HOST for a download host, see loopback.mjs).
// Prints one JSON line: seconds for saveCache and restoreCache.
import '../tests/cache/npm/loopback.mjs'
import {randomFillSync} from 'node:crypto'
import {closeSync, mkdirSync, openSync, rmSync, writeSync} from 'node:fs'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

const [moduleDir, sizeArg] = process.argv.slice(2)
const size = Number(sizeArg)
const mod = await import(pathToFileURL(join(moduleDir, 'node_modules/@actions/cache/lib/cache.js')).href)
const cache = mod.saveCache ? mod : mod.default
const work = join(process.env.RUNNER_TEMP, `bench-${process.pid}`)
const data = join(work, 'data')
mkdirSync(data, {recursive: true})
const fd = openSync(join(data, 'entry.bin'), 'w')
const chunk = Buffer.alloc(8 * 1024 * 1024)
for (let left = size; left > 0; left -= chunk.length) {
  randomFillSync(chunk) // every byte random: zstd --long would find a repeated chunk
  writeSync(fd, chunk, 0, Math.min(left, chunk.length))
}
closeSync(fd)
const key = `bench-${process.pid}`
let t = performance.now()
const id = await cache.saveCache([data], key)
const save = (performance.now() - t) / 1000
rmSync(data, {recursive: true, force: true})
t = performance.now()
const hit = await cache.restoreCache([data], key)
const restore = (performance.now() - t) / 1000
rmSync(work, {recursive: true, force: true})
console.log(JSON.stringify({id, hit, save_s: save, restore_s: restore}))
process.exit(0) // the client's progress timers would keep the process alive after a failed download
