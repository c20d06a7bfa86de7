// Import first: with LOOPBACK_HOST set, that host name resolves to 127.0.0.1 in this process, as the VM's
// resolver points a download host (SMITH_CACHE_DOWNLOAD_HOST, e.g. smith.blob.core.windows.net) at the cache.
import dns from 'node:dns'

const host = process.env.LOOPBACK_HOST
if (host) {
  const lookup = dns.lookup
  dns.lookup = (name, options, callback) => {
    if (name !== host) return lookup(name, options, callback)
    const cb = typeof options === 'function' ? options : callback
    const all = typeof options === 'object' && options.all
    process.nextTick(() => (all ? cb(null, [{address: '127.0.0.1', family: 4}]) : cb(null, '127.0.0.1', 4)))
  }
}
