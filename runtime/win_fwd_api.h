#pragma once
// Transitional while the tests move over: renamed to attn_fwd_api.h.
#include "runtime/attn_fwd_api.h"
namespace nsajit {
using WinFwdArgs = AttnFwdArgs;
}
