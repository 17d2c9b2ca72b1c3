// The namespace the operators are registered under: roiops, or another one for a test build of the
// same sources beside it (the emulated CUDA library registers roiops_emu, see cuda/emulation.h).
#pragma once

#ifndef ROIOPS_OP_NAMESPACE
#define ROIOPS_OP_NAMESPACE roiops
#endif
