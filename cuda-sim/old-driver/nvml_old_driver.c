// The NVML of an older driver (R470-era), for tests: it exports only the functions such a
// driver had and forwards each to the simulated NVML (the library VIGIL_NVML_SIM_LIB names); the
// functions of R510 and later (nvmlDeviceGetMemoryInfo_v2, nvmlDeviceGetComputeRunningProcesses_v3,
// nvmlEventSetWait_v2, nvmlSystemGetCudaDriverVersion_v2, nvmlDeviceGetRetiredPages_v2) are
// missing, as they are from the real library of such a driver.
//
// Every forwarded function takes integer or pointer arguments only (at most six), so passing
// six register-sized arguments through is exact on x86-64 and arm64.
#include <dlfcn.h>
#include <stdlib.h>

typedef unsigned (*forward_fn)(void*, void*, void*, void*, void*, void*);

static forward_fn find(const char* name) {
    static void* sim;
    if (!sim) {
        const char* path = getenv("VIGIL_NVML_SIM_LIB");
        sim = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : 0;
    }
    return sim ? (forward_fn)dlsym(sim, name) : 0;
}

#define FORWARD(name)                                                                   \
    unsigned name(void* a, void* b, void* c, void* d, void* e, void* f) {               \
        forward_fn real = find(#name);                                                  \
        return real ? real(a, b, c, d, e, f) : 999; /* NVML_ERROR_UNKNOWN */            \
    }

FORWARD(nvmlInit_v2)
FORWARD(nvmlInitWithFlags)
FORWARD(nvmlShutdown)
FORWARD(nvmlSystemGetDriverVersion)
FORWARD(nvmlSystemGetCudaDriverVersion)
FORWARD(nvmlDeviceGetCount_v2)
FORWARD(nvmlDeviceGetHandleByIndex_v2)
FORWARD(nvmlDeviceGetIndex)
FORWARD(nvmlDeviceGetUUID)
FORWARD(nvmlDeviceGetName)
FORWARD(nvmlDeviceGetPciInfo_v3)
FORWARD(nvmlDeviceGetMemoryInfo)
FORWARD(nvmlDeviceGetUtilizationRates)
FORWARD(nvmlDeviceGetPowerUsage)
FORWARD(nvmlDeviceGetEnforcedPowerLimit)
FORWARD(nvmlDeviceGetTotalEnergyConsumption)
FORWARD(nvmlDeviceGetTemperature)
FORWARD(nvmlDeviceGetClockInfo)
FORWARD(nvmlDeviceGetMaxClockInfo)
FORWARD(nvmlDeviceGetMemoryBusWidth)
FORWARD(nvmlDeviceGetCurrentClocksThrottleReasons)
FORWARD(nvmlDeviceGetPcieReplayCounter)
FORWARD(nvmlDeviceGetTotalEccErrors)
FORWARD(nvmlDeviceGetRetiredPages)
FORWARD(nvmlDeviceGetFieldValues)
FORWARD(nvmlEventSetCreate)
FORWARD(nvmlDeviceRegisterEvents)
FORWARD(nvmlEventSetFree)

const char* nvmlErrorString(unsigned result) {
    typedef const char* (*error_string_fn)(unsigned);
    error_string_fn real = (error_string_fn)find("nvmlErrorString");
    return real ? real(result) : "Unknown Error";
}
