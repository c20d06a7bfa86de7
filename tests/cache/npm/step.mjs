// One save or restore with the real @actions/cache client, for tests that switch tokens between steps.
//
//   node step.mjs <dir with node_modules/@actions/cache> save <path> <key> <content>
//   node step.mjs <dir with node_modules/@actions/cache> restore <path> <key> [restore keys...]
//
// The caller sets ACTIONS_RUNTIME_TOKEN, ACTIONS_CACHE_URL or ACTIONS_RESULTS_URL (+ ACTIONS_CACHE_SERVICE_V2)
// and RUNNER_TEMP. Prints one JSON line: {"id"} for a save, {"hit", "content"} for a restore, {"error"} on a throw.
import {mkdirSync, readFileSync, rmSync, writeFileSync, existsSync} from 'node:fs'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

const [moduleDir, action, path, key, ...rest] = process.argv.slice(2)
const mod = await import(pathToFileURL(join(moduleDir, 'node_modules/@actions/cache/lib/cache.js')).href)
const cache = mod.saveCache ? mod : mod.default
const file = join(path, 'content.txt')

try {
  if (action === 'save') {
    rmSync(path, {recursive: true, force: true})
    mkdirSync(path, {recursive: true})
    writeFileSync(file, rest[0])
    console.log(JSON.stringify({id: await cache.saveCache([path], key)}))
  } else {
    rmSync(path, {recursive: true, force: true})
    const hit = await cache.restoreCache([path], key, rest)
    const content = existsSync(file) ? readFileSync(file, 'utf8') : null
    console.log(JSON.stringify({hit: hit ?? null, content}))
  }
} catch (err) {
  console.log(JSON.stringify({error: String(err?.message || err)}))
}
