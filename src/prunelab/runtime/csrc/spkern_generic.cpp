// prunelab sparse kernels compiled for generic (generated pattern: see spkern_impl.h).
#include "spkern.h"
#define SPK_NS generic
#define SPK_W 4
#include "spkern_impl.h"
