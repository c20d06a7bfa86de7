// Save and restore a directory through a running `smith cache serve` with the real @actions/cache client.
//
//   node conformance.mjs <dir with node_modules/@actions/cache> [--big]
//
// The caller sets the environment a runner would: ACTIONS_RUNTIME_TOKEN, ACTIONS_CACHE_URL (3.x) or
// ACTIONS_RESULTS_URL + ACTIONS_CACHE_SERVICE_V2=true (4.x+), RUNNER_TEMP (LOOPBACK_HOST: see loopback.mjs). Prints one JSON line per check
// and exits non-zero if any check fails. --big adds a ~150 MB incompressible entry (chunked / block uploads).
import './loopback.mjs'
import {createHash, randomBytes} from 'node:crypto'
import {mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, statSync} from 'node:fs'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

const moduleDir = process.argv[2]
const big = process.argv.includes('--big')
const mod = await import(pathToFileURL(join(moduleDir, 'node_modules/@actions/cache/lib/cache.js')).href)
const cache = mod.saveCache ? mod : mod.default

const work = join(process.env.RUNNER_TEMP, `conformance-${process.pid}`)
const data = join(work, 'data')
const run = randomBytes(4).toString('hex')
let failures = 0

function check(name, ok, detail = {}) {
  console.log(JSON.stringify({check: name, ok, ...detail}))
  if (!ok) failures++
}

function digest(dir) {
  const out = {}
  for (const name of readdirSync(dir, {recursive: true}).sort()) {
    const p = join(dir, name)
    if (statSync(p).isFile()) out[name] = createHash('sha256').update(readFileSync(p)).digest('hex')
  }
  return out
}

function fill(sizes) {
  rmSync(data, {recursive: true, force: true})
  mkdirSync(join(data, 'nested', 'deeper'), {recursive: true})
  writeFileSync(join(data, 'hello.txt'), `hello from ${run}\n`)
  sizes.forEach((n, i) => writeFileSync(join(data, 'nested', i % 2 ? 'deeper' : '', `blob${i}.bin`), randomBytes(n)))
  return digest(data)
}

async function roundTrip(label, key, sizes, options) {
  const before = fill(sizes)
  const id = await cache.saveCache([data], key, options)
  check(`${label}: save returns an id`, id > 0, {id})
  rmSync(data, {recursive: true, force: true})
  const hit = await cache.restoreCache([data], key)
  check(`${label}: exact key hit`, hit === key, {hit})
  const after = hit ? digest(data) : {}
  check(`${label}: restored bytes match`, JSON.stringify(before) === JSON.stringify(after), {
    files: Object.keys(before).length
  })
  return before
}

try {
  const key = `conformance-${run}-linux-abc123`
  const before = await roundTrip('small', key, [3 * 1024 * 1024, 70 * 1024, 1])

  rmSync(data, {recursive: true, force: true})
  const viaPrefix = await cache.restoreCache([data], `conformance-${run}-linux-nomatch`, [`conformance-${run}-linux-`])
  check('restore-key prefix hit', viaPrefix === key, {hit: viaPrefix})
  check('restore-key bytes match', viaPrefix ? JSON.stringify(digest(data)) === JSON.stringify(before) : false)

  const miss = await cache.restoreCache([data], `conformance-${run}-absent`, [`conformance-${run}-other-`])
  check('miss returns undefined', miss === undefined, {hit: miss})

  const otherPaths = await cache.restoreCache([join(work, 'elsewhere')], key)
  check('version mismatch (other paths) is a miss', otherPaths === undefined, {hit: otherPaths})

  fill([1024])
  const again = await cache.saveCache([data], key)
  check('second save of a finalized key is refused', again === -1, {id: again})

  if (big) {
    // 3.x: 8 MiB chunks, PATCHed 4 at a time. 4.x+: > 128 MiB, so 64 MiB blocks + a block list.
    await roundTrip('big', `conformance-${run}-big`, [150 * 1024 * 1024], {uploadChunkSize: 8 * 1024 * 1024})
  }
} catch (err) {
  check('no exception', false, {error: String(err?.stack || err)})
} finally {
  rmSync(work, {recursive: true, force: true})
}
process.exit(failures ? 1 : 0)
