"""The pack's templates (``example_workflows/<name>.json``) by name, as the tests open them: the template browser
titles them by their file names, so the names are the artists' words (README, "Example workflows")."""

BASIC = "ConFiner 1 - start here - SD 1.5 and AnimateDiff"
LONG_SD = "ConFiner 2 - long video - SD 1.5 and AnimateDiff"
COMPARE = "ConFiner 3 - compare refine modes - SD 1.5"
WAN_QWEN = "ConFiner 4 - Wan 2.1 and Qwen-Image"
WAN_FLUX = "ConFiner 5 - Wan 2.1 and FLUX.1-dev"
SD_BRIDGE = "ConFiner 6 - SD 1.5 refining Wan 2.1 - two latent spaces"
LONG_WAN = "ConFiner 7 - long video - Wan 2.1"
A14B = "ConFiner 8 - Wan 2.2 A14B"
