// An upload sink for bench/cache.py: answers every PUT as Azure Blob Storage answers a staged block or a block
// list (201 and the headers the SDK reads) once the body has been read, and keeps nothing. The client's upload
// into it is the fastest that client can upload on this machine: its ceiling, whatever the server.
//   node cache_sink.mjs        prints the port it listens on (127.0.0.1), then serves until killed
import {randomUUID} from 'node:crypto'
import http from 'node:http'

const server = http.createServer((req, res) => {
  req.on('data', () => {})
  req.on('end', () => {
    if (req.method !== 'PUT') {
      res.writeHead(404, {'Content-Length': '0'}).end()
      return
    }
    res.writeHead(201, {
      'Content-Length': '0',
      ETag: `"0x${randomUUID().slice(0, 8).toUpperCase()}"`,
      'Last-Modified': new Date().toUTCString(),
      'x-ms-request-id': randomUUID(),
      'x-ms-version': '2024-11-04',
      'x-ms-request-server-encrypted': 'false'
    })
    res.end()
  })
})
server.listen(0, '127.0.0.1', () => console.log(server.address().port))
