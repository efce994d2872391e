/*
 * A fake NVML (libnvidia-ml.so.1) for tests: lets the real NVML code path of
 * plugin_scheduling (src/core/stats/gpu.rs over nvml-wrapper 0.13 /
 * nvml-wrapper-sys 0.10) run on a machine without an NVIDIA GPU or driver.
 *
 *     cc -shared -fPIC -O2 -o libnvidia-ml.so.1 fake_nvml.c
 *     PLUGIN_SCHEDULING_NVML_LIBRARY=$PWD/libnvidia-ml.so.1 python ...
 *
 * Symbols: those nvml-wrapper calls for Nvml::builder().lib_path(..).init()
 * (nvmlInit_v2, then nvmlSystemGetDriverVersion for its field-id scheme),
 * device_count, device_by_index, the Device methods gpu.rs uses, and
 * nvmlShutdown (Nvml's Drop calls it through an `.expect()`: it must exist).
 * nvmlErrorString is not called by nvml-wrapper 0.13 but is part of every
 * NVML and costs nothing. nvml-wrapper-sys resolves every symbol it knows at
 * load time but keeps a missing one as an Err, reported only when called, so
 * nothing else is needed.
 *
 * Configuration, read from the environment at each call (so a process can
 * change it between snapshots):
 *   FAKE_NVML_DEVICES   "total_mb:used_mb:util_percent,..." one entry per
 *                       device (unset or empty: NVML works, zero devices)
 *   FAKE_NVML_PROCESS   "device_index:pid:used_mb[,...]" compute processes;
 *                       used_mb "na" reports NVML_VALUE_NOT_AVAILABLE
 *   FAKE_NVML_INIT_FAIL "1": nvmlInit_v2 returns NVML_ERROR_DRIVER_NOT_LOADED
 *   FAKE_NVML_LOG       a file: each call appends "<pid> <function>\n"
 *
 * Per device i: name "Fake GPU <i>", UUID "GPU-fake-<i>", temperature
 * 40+i degrees C, power 100000+i mW, memory utilisation util/2 percent.
 *
 * Like real NVML, initialisation is reference counted and every device call
 * before nvmlInit returns NVML_ERROR_UNINITIALIZED. Stricter than needed on
 * purpose: initialisation belongs to the process that made it, so a child of
 * fork() sees NVML as uninitialised until it calls nvmlInit itself (NVML is
 * not fork-safe; a handle inherited across fork must not be used).
 */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

enum { NVML_TEMPERATURE_GPU = 0 };

/* Layouts as in nvml.h and nvml-wrapper-sys 0.10 bindings.rs. */
typedef struct {
    unsigned int version; /* sizeof(nvmlMemory_v2_t) | 2 << 24 */
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct { /* nvmlProcessInfo_v2_t, what _v3 process calls fill */
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

#define NVML_MEMORY_V2_VERSION ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
#define NVML_VALUE_NOT_AVAILABLE_ULL (~0ULL)
#define NO_INSTANCE 0xFFFFFFFFu

#define MAX_DEVICES 64
#define MAX_PROCESSES 64
#define MIB (1024ULL * 1024ULL)

typedef struct {
    unsigned long long total_mb, used_mb;
    unsigned int util;
} fake_device;

typedef struct {
    unsigned int device, pid;
    unsigned long long used_bytes;
} fake_process;

/* Device handles point into this array; the handle's offset is the index. */
static char handles[MAX_DEVICES];
static int init_count;
static pid_t init_pid;

static void log_call(const char *function)
{
    const char *path = getenv("FAKE_NVML_LOG");
    if (path == NULL || *path == '\0')
        return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0)
        return;
    char line[128];
    int n = snprintf(line, sizeof line, "%d %s\n", (int)getpid(), function);
    if (n > 0)
        (void)!write(fd, line, (size_t)n); /* one write: whole lines even across processes */
    close(fd);
}

static int initialised(void)
{
    return init_count > 0 && init_pid == getpid();
}

static int read_devices(fake_device *out)
{
    const char *spec = getenv("FAKE_NVML_DEVICES");
    int n = 0;
    if (spec == NULL)
        return 0;
    while (*spec != '\0' && n < MAX_DEVICES) {
        char *end;
        fake_device d = {0, 0, 0};
        d.total_mb = strtoull(spec, &end, 10);
        if (*end == ':')
            d.used_mb = strtoull(end + 1, &end, 10);
        if (*end == ':')
            d.util = (unsigned int)strtoul(end + 1, &end, 10);
        if (end == spec)
            break; /* not a number: stop, as if the list ended here */
        out[n++] = d;
        spec = strchr(end, ',');
        if (spec == NULL)
            break;
        spec++;
    }
    return n;
}

static int read_processes(fake_process *out)
{
    const char *spec = getenv("FAKE_NVML_PROCESS");
    int n = 0;
    if (spec == NULL)
        return 0;
    while (*spec != '\0' && n < MAX_PROCESSES) {
        char *end;
        fake_process p = {0, 0, 0};
        p.device = (unsigned int)strtoul(spec, &end, 10);
        if (end == spec || *end != ':')
            break;
        p.pid = (unsigned int)strtoul(end + 1, &end, 10);
        if (*end != ':')
            break;
        if (strncmp(end + 1, "na", 2) == 0) {
            p.used_bytes = NVML_VALUE_NOT_AVAILABLE_ULL;
            end += 3;
        } else {
            p.used_bytes = strtoull(end + 1, &end, 10) * MIB;
        }
        out[n++] = p;
        spec = strchr(end, ',');
        if (spec == NULL)
            break;
        spec++;
    }
    return n;
}

/* Checks init and the handle; the device's index and figures on success. */
static nvmlReturn_t lookup(nvmlDevice_t device, unsigned int *index, fake_device *figures)
{
    fake_device all[MAX_DEVICES];
    if (!initialised())
        return NVML_ERROR_UNINITIALIZED;
    if ((char *)device < handles || (char *)device >= handles + MAX_DEVICES)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int i = (unsigned int)((char *)device - handles);
    if (i >= (unsigned int)read_devices(all))
        return NVML_ERROR_INVALID_ARGUMENT; /* the device went away */
    *index = i;
    if (figures != NULL)
        *figures = all[i];
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(char *dst, unsigned int length, const char *src)
{
    if (dst == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void)
{
    log_call("nvmlInit_v2");
    const char *fail = getenv("FAKE_NVML_INIT_FAIL");
    if (fail != NULL && strcmp(fail, "1") == 0)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    if (init_pid != getpid()) { /* first init here, or state inherited across fork */
        init_pid = getpid();
        init_count = 0;
    }
    init_count++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void)
{
    log_call(initialised() ? "nvmlShutdown" : "nvmlShutdown-uninitialised");
    if (!initialised())
        return NVML_ERROR_UNINITIALIZED;
    init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument Version Mismatch";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    log_call("nvmlSystemGetDriverVersion");
    if (!initialised())
        return NVML_ERROR_UNINITIALIZED;
    return copy_string(version, length, "550.54.15");
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    fake_device all[MAX_DEVICES];
    log_call("nvmlDeviceGetCount_v2");
    if (!initialised())
        return NVML_ERROR_UNINITIALIZED;
    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)read_devices(all);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    fake_device all[MAX_DEVICES];
    log_call("nvmlDeviceGetHandleByIndex_v2");
    if (!initialised())
        return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= (unsigned int)read_devices(all))
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)(void *)(handles + index);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    unsigned int i;
    fake_device d;
    log_call("nvmlDeviceGetMemoryInfo_v2");
    nvmlReturn_t r = lookup(device, &i, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (memory == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != NVML_MEMORY_V2_VERSION)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long used = d.used_mb < d.total_mb ? d.used_mb : d.total_mb;
    memory->total = d.total_mb * MIB;
    memory->reserved = 0;
    memory->used = used * MIB;
    memory->free = (d.total_mb - used) * MIB;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    unsigned int i;
    fake_device d;
    log_call("nvmlDeviceGetUtilizationRates");
    nvmlReturn_t r = lookup(device, &i, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (utilization == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    utilization->gpu = d.util;
    utilization->memory = d.util / 2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp)
{
    unsigned int i;
    log_call("nvmlDeviceGetTemperature");
    nvmlReturn_t r = lookup(device, &i, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (temp == NULL || sensor != NVML_TEMPERATURE_GPU)
        return NVML_ERROR_INVALID_ARGUMENT;
    *temp = 40 + i;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    unsigned int i;
    log_call("nvmlDeviceGetPowerUsage");
    nvmlReturn_t r = lookup(device, &i, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (power == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *power = 100000 + i; /* milliwatts */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    unsigned int i;
    char text[32];
    log_call("nvmlDeviceGetName");
    nvmlReturn_t r = lookup(device, &i, NULL);
    if (r != NVML_SUCCESS)
        return r;
    snprintf(text, sizeof text, "Fake GPU %u", i);
    return copy_string(name, length, text);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    unsigned int i;
    char text[32];
    log_call("nvmlDeviceGetUUID");
    nvmlReturn_t r = lookup(device, &i, NULL);
    if (r != NVML_SUCCESS)
        return r;
    snprintf(text, sizeof text, "GPU-fake-%u", i);
    return copy_string(uuid, length, text);
}

/*
 * As NVML documents it: *infoCount in is the room in infos (0 with infos NULL
 * to ask the size); out, the number of processes. Too little room returns
 * NVML_ERROR_INSUFFICIENT_SIZE with *infoCount set to the number needed.
 */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                     nvmlProcessInfo_t *infos)
{
    unsigned int i, n = 0;
    fake_process all[MAX_PROCESSES];
    log_call("nvmlDeviceGetComputeRunningProcesses_v3");
    nvmlReturn_t r = lookup(device, &i, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (infoCount == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    int total = read_processes(all);
    for (int k = 0; k < total; k++)
        n += all[k].device == i;
    if (*infoCount < n) {
        *infoCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (n > 0 && infos == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int out = 0;
    for (int k = 0; k < total; k++) {
        if (all[k].device != i)
            continue;
        infos[out].pid = all[k].pid;
        infos[out].usedGpuMemory = all[k].used_bytes;
        infos[out].gpuInstanceId = NO_INSTANCE;
        infos[out].computeInstanceId = NO_INSTANCE;
        out++;
    }
    *infoCount = n;
    return NVML_SUCCESS;
}
