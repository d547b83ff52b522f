// Lighthouse 12.2.3's command line, with one trace field mapped back at start-up (the installed
// package is not edited): Chromium 156 names the PipelineReporter event's argument
// `frame_reporter` where Lighthouse's trace engine reads `chrome_frame_reporter`, and without it
// the RootCauses gatherer fails, taking the LCP and layout-shift audits with it.
import Trace from 'lighthouse/core/gather/gatherers/trace.js';

const collect = Trace.endTraceAndCollectEvents;
Trace.endTraceAndCollectEvents = async function (session) {
  const trace = await collect.call(this, session);
  for (const e of trace.traceEvents) {
    const a = e.args;
    if (e.name === 'PipelineReporter' && a && a.frame_reporter && !a.chrome_frame_reporter) {
      a.chrome_frame_reporter = a.frame_reporter;
    }
  }
  return trace;
};
await import('lighthouse/cli/index.js');
