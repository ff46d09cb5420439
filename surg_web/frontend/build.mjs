// Builds the vendored browser libraries into ../static/vendor (committed, so running the app
// needs no npm): Uppy (core, dashboard, aws-s3 multipart, golden-retriever) as one IIFE bundle,
// and video.js's core build (no VHS/HLS: the app plays progressive MP4 with range requests).
import { build } from 'esbuild'
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = join(here, '..', 'static', 'vendor')
mkdirSync(out, { recursive: true })
const pkg = (name) => JSON.parse(readFileSync(join(here, 'node_modules', name, 'package.json')))

await build({
  entryPoints: [join(here, 'uppy-entry.js')],
  bundle: true,
  minify: true,
  format: 'iife',
  globalName: 'SurgUppy',
  target: ['chrome110', 'firefox110', 'safari16'],
  legalComments: 'eof',
  outfile: join(out, 'uppy.min.js'),
})
const css = ['@uppy/core/dist/style.min.css', '@uppy/dashboard/dist/style.min.css']
  .map((p) => readFileSync(join(here, 'node_modules', p), 'utf8'))
  .join('\n')
writeFileSync(join(out, 'uppy.min.css'), css)
copyFileSync(join(here, 'node_modules/video.js/dist/alt/video.core.novtt.min.js'), join(out, 'video.min.js'))
copyFileSync(join(here, 'node_modules/video.js/dist/video-js.min.css'), join(out, 'video-js.min.css'))
const versions = Object.fromEntries(
  ['@uppy/core', '@uppy/dashboard', '@uppy/aws-s3', '@uppy/golden-retriever', 'video.js'].map((n) => [n, pkg(n).version]),
)
writeFileSync(join(out, 'VERSIONS.json'), JSON.stringify(versions, null, 2) + '\n')
console.log('built', out, versions)
