// Time one transfer through the real @actions/cache v2 client's own functions, nothing else (no tar, no lookup):
//   node cache_transfer.mjs <dir with node_modules/@actions/cache> download <url> <file>
//   node cache_transfer.mjs <dir with node_modules/@actions/cache> upload <signed upload url> <file>
// download = downloadCacheHttpClient (one stream, what the client uses for a URL not on *.blob.core.windows.net);
// upload = uploadCacheArchiveSDK with saveCache's options (64 MiB blocks, 8 in parallel).
// bench/cache.py runs it against Smith and against nginx serving (or discarding) the same bytes: the client's
// ceiling. Prints one JSON line: seconds, and the client's own CPU seconds (user, system).
import {statSync} from 'node:fs'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

const [moduleDir, way, url, file] = process.argv.slice(2)
const lib = join(moduleDir, 'node_modules/@actions/cache/lib/internal')
const t = performance.now()
if (way === 'download') {
  const {downloadCacheHttpClient} = await import(pathToFileURL(join(lib, 'downloadUtils.js')).href)
  await downloadCacheHttpClient(url, file)
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
