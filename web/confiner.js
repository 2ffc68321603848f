// The one frontend extension of the pack: the Long Video's prompt-schedule box keeps its height.
//
// The frontend shares a node's free height among its growable widgets: before a run the segment-prompts box takes
// all of it (440 px on the template), then gives it up to the progress text and the live preview as they arrive
// (75 px), and every widget below it jumps up while an artist may be about to click one. A fixed height (about ten
// lines) leaves the rest of the node to the text and the preview from the start. tests/test_comfy_browser.py checks
// the box's height before and after both arrive.
import { app } from "../../scripts/app.js";

const NODE = "ConFinerLongSegmenter";
const WIDGET = "segment_prompts";
const SCHEDULE_BOX_HEIGHT = 160;

app.registerExtension({
  name: "ConFiner.ScheduleBoxHeight",
  nodeCreated(node) {
    if (node.comfyClass !== NODE) return;
    const box = node.widgets?.find((w) => w.name === WIDGET);
    if (!box?.options) return;
    box.options.getMinHeight = () => SCHEDULE_BOX_HEIGHT;
    box.options.getMaxHeight = () => SCHEDULE_BOX_HEIGHT;
  },
});
