// Time one transfer through the real @actions/cache v2 client's own functions, nothing else (no tar, no lookup):
//   node cache_transfer.mjs <dir with node_modules/@actions/cache> download <url> <file>
//   node cache_transfer.mjs <dir with node_modules/@actions/cache> upload <signed upload url> <file>
// download = the client's downloadCache with the option restoreCache (v2) forces, useAzureSdk: one stream
// (downloadCacheHttpClient) for a URL not on *.blob.core.windows.net, the Azure SDK's parallel ranges for one that
// is (LOOPBACK_HOST resolves that host here);
// upload = uploadCacheArchiveSDK with saveCache's options (64 MiB blocks, 8 in parallel).
// bench/cache.py runs it against Smith and against nginx serving (or discarding) the same bytes: the client's
// ceiling. Prints one JSON line: seconds, and the client's own CPU seconds (user, system).
import '../tests/cache/npm/loopback.mjs'
import {statSync} from 'node:fs'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

const [moduleDir, way, url, file] = process.argv.slice(2)
const lib = join(moduleDir, 'node_modules/@actions/cache/lib/internal')
const t = performance.now()
if (way === 'download') {
  const {downloadCache} = await import(pathToFileURL(join(lib, 'cacheHttpClient.js')).href)
  await downloadCache(url, file, {useAzureSdk: true}) // as restoreCacheV2 calls it
} else if (way === 'upload') {
  const {uploadCacheArchiveSDK} = await import(pathToFileURL(join(lib, 'uploadUtils.js')).href)
  const options = {uploadChunkSize: 64 * 1024 * 1024, uploadConcurrency: 8, archiveSizeBytes: statSync(file).size}
  await uploadCacheArchiveSDK(url, file, options)
} else {
  throw new Error(`unknown transfer ${way}`)
}
const seconds = (performance.now() - t) / 1000
const usage = process.resourceUsage()
console.log(JSON.stringify({seconds, user_s: usage.userCPUTime / 1e6, system_s: usage.systemCPUTime / 1e6}))
process.exit(0) // the client's progress timers would keep the process alive
