// A stand-in libcuda.so.1 for machines without a GPU (CI): the CUDA driver entry points that
// cudarc 0.19 resolves when hetensor's CudaBackend runs, with device memory in host memory,
// every stream operation executed synchronously, and cuLaunchKernel running the kernels of
// kernels/*.cu compiled as host C++ (emu.cpp, the same emulator as tests/cuda_emulated.rs).
// Built by scripts/cuda_shim.sh; put first on LD_LIBRARY_PATH, it lets the unchanged
// tests/cuda_parity.rs exercise the backend's host code (argument marshalling, tables, limb
// maps, caches, stream-ordered frees) against the CPU backend. NVRTC still compiles the real
// CUBIN/PTX: cuModuleLoadData reads the kernel names the image exports (ELF symbol table or PTX
// .entry lines) and cuModuleGetFunction fails for a name missing from the image or the emulator.
//
// Checks a real driver would not make, so that host-side bugs fail loudly here:
//   - every copy and memset range must lie inside one live allocation;
//   - fresh allocations are filled with 0xcd bytes (0xcdcdcdcd exceeds every prime, so a word
//     read before it is written changes the result), freed ones with 0xfd and kept unusable in
//     a bounded quarantine (a kernel launched on a freed buffer reads poison);
//   - a launch with `extra` arguments, an unknown kernel, a bad configuration or a kernel fault
//     the emulator detects fails with an error code.
// Symbols are resolved lazily by cudarc, one per function: a function the backend starts using
// that is missing here fails the tests with "Missing symbol cu...". Only cu* are exported
// (-fvisibility=hidden), so the emulator inside never clashes with the one the cuda-emu test
// binaries link statically.
#include <elf.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "cuda_host.h"

extern "C" int hetensor_emu_launch(const char* name, dim3 grid, dim3 block, std::size_t shmem,
                                   void** args);
extern "C" int hetensor_emu_kernel_arity(const char* name);

#define EXPORT extern "C" __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUstream;
typedef void* CUevent;
typedef void* CUmemoryPool;

namespace {

enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

// Device attributes the backend and cudarc read (anything else is an error, so that a new
// dependency shows up instead of reading a made-up value).
enum : int {
    ATTR_CC_MAJOR = 75,
    ATTR_CC_MINOR = 76,
    ATTR_MEMORY_POOLS_SUPPORTED = 115,
};

const char DEVICE_NAME[] = "hetensor libcuda shim (kernels/*.cu emulated on the host)";

std::atomic<bool> g_init{false};

// The one device has a single (primary) context; its address is the handle.
int g_primary_ctx = 0;
int g_pool = 0;
thread_local CUcontext t_current = nullptr;

int device_count() {
    // HETENSOR_CUDA_SHIM_DEVICES=0 simulates a driver without a device.
    const char* v = std::getenv("HETENSOR_CUDA_SHIM_DEVICES");
    return v && std::strcmp(v, "0") == 0 ? 0 : 1;
}

// ---- memory: live allocations and a quarantine of freed ones

constexpr unsigned char FRESH = 0xcd;
constexpr unsigned char FREED = 0xfd;
constexpr std::size_t QUARANTINE_BYTES = 256u << 20;

struct Memory {
    std::mutex m;
    std::map<std::uintptr_t, std::size_t> live;  // base -> bytes
    std::deque<std::pair<void*, std::size_t>> quarantine;
    std::size_t quarantined = 0;
};
Memory& mem() {
    static Memory* m = new Memory;  // never destroyed: frees may come from exit handlers
    return *m;
}

// Whether [p, p + n) lies inside one live allocation (n = 0: p inside or at the end of one).
bool inside(std::uintptr_t p, std::size_t n) {
    Memory& M = mem();
    std::lock_guard<std::mutex> g(M.m);
    auto it = M.live.upper_bound(p);
    if (it == M.live.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second && p + n >= p;
}

CUresult alloc(CUdeviceptr* out, std::size_t bytes) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    // At least one byte, so that every allocation has its own address.
    void* p = std::malloc(bytes ? bytes : 1);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    std::memset(p, FRESH, bytes);
    Memory& M = mem();
    std::lock_guard<std::mutex> g(M.m);
    M.live[(std::uintptr_t)p] = bytes;
    *out = (CUdeviceptr)(std::uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr d) {
    Memory& M = mem();
    std::lock_guard<std::mutex> g(M.m);
    auto it = M.live.find((std::uintptr_t)d);
    if (it == M.live.end()) return CUDA_ERROR_INVALID_VALUE;
    void* p = (void*)it->first;
    std::size_t bytes = it->second;
    M.live.erase(it);
    std::memset(p, FREED, bytes);
    M.quarantine.emplace_back(p, bytes);
    M.quarantined += bytes;
    while (M.quarantined > QUARANTINE_BYTES && !M.quarantine.empty()) {
        M.quarantined -= M.quarantine.front().second;
        std::free(M.quarantine.front().first);
        M.quarantine.pop_front();
    }
    return CUDA_SUCCESS;
}

// ---- modules: the kernel names an image exports

struct Module {
    std::set<std::string> names;
};
struct Function {
    std::string name;
    Module* module;
};

bool is_ident(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '$';
}

// The global function symbols of an ELF64 image (a CUBIN). False if it is malformed.
bool elf_functions(const unsigned char* img, std::set<std::string>& out) {
    Elf64_Ehdr eh;
    std::memcpy(&eh, img, sizeof eh);
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_shentsize != sizeof(Elf64_Shdr) ||
        eh.e_shoff == 0 || eh.e_shnum == 0)
        return false;
    auto shdr = [&](unsigned i) {
        Elf64_Shdr s;
        std::memcpy(&s, img + eh.e_shoff + (std::size_t)i * sizeof s, sizeof s);
        return s;
    };
    bool found = false;
    for (unsigned i = 0; i < eh.e_shnum; i++) {
        Elf64_Shdr s = shdr(i);
        if (s.sh_type != SHT_SYMTAB || s.sh_entsize != sizeof(Elf64_Sym) || s.sh_link >= eh.e_shnum)
            continue;
        found = true;
        Elf64_Shdr strtab = shdr(s.sh_link);
        for (std::size_t k = 0; k < s.sh_size / sizeof(Elf64_Sym); k++) {
            Elf64_Sym sym;
            std::memcpy(&sym, img + s.sh_offset + k * sizeof sym, sizeof sym);
            if (ELF64_ST_TYPE(sym.st_info) == STT_FUNC && ELF64_ST_BIND(sym.st_info) == STB_GLOBAL &&
                sym.st_name < strtab.sh_size)
                out.insert((const char*)img + strtab.sh_offset + sym.st_name);
        }
    }
    return found;
}

// The `.entry NAME` kernels of a PTX text. False if it does not look like PTX.
bool ptx_entries(const char* ptx, std::set<std::string>& out) {
    if (!std::strstr(ptx, ".version") || !std::strstr(ptx, ".target")) return false;
    for (const char* p = std::strstr(ptx, ".entry"); p; p = std::strstr(p, ".entry")) {
        p += 6;
        while (*p == ' ' || *p == '\t') p++;
        const char* e = p;
        while (is_ident(*e)) e++;
        if (e > p) out.emplace(p, e);
    }
    return true;
}

}  // namespace

// ---- initialization, devices, contexts

EXPORT CUresult cuInit(unsigned int flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (device_count() == 0) return CUDA_ERROR_NO_DEVICE;
    g_init = true;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = 13000;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int* count) {
    if (!g_init) return CUDA_ERROR_NOT_INITIALIZED;
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = device_count();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
    if (!g_init) return CUDA_ERROR_NOT_INITIALIZED;
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *dev = 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int* value, int attrib, CUdevice dev) {
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    switch (attrib) {
    case ATTR_CC_MAJOR: *value = 9; return CUDA_SUCCESS;  // NVRTC compiles sm_90 for it
    case ATTR_CC_MINOR: *value = 0; return CUDA_SUCCESS;
    case ATTR_MEMORY_POOLS_SUPPORTED: *value = 1; return CUDA_SUCCESS;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
}

EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::strncpy(name, DEVICE_NAME, (std::size_t)len - 1);
    name[len - 1] = 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice dev) {
    if (!g_init) return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    *ctx = &g_primary_ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    return dev == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext* ctx) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = t_current;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    if (ctx && ctx != &g_primary_ctx) return CUDA_ERROR_INVALID_CONTEXT;
    t_current = ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize() { return t_current ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT; }

EXPORT CUresult cuStreamSynchronize(CUstream) {
    return t_current ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

// ---- events (work is synchronous: an event is always complete)

EXPORT CUresult cuEventCreate(CUevent* e, unsigned int) {
    if (!e) return CUDA_ERROR_INVALID_VALUE;
    *e = new int(0);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventDestroy_v2(CUevent e) {
    delete static_cast<int*>(e);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecord(CUevent e, CUstream) {
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}
EXPORT CUresult cuEventSynchronize(CUevent e) {
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}
EXPORT CUresult cuStreamWaitEvent(CUstream, CUevent e, unsigned int) {
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

// ---- memory

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice dev) {
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    *pool = &g_pool;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, int, void* value) {
    return pool == &g_pool && value ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr* d, std::size_t bytes, CUstream) {
    return t_current ? alloc(d, bytes) : CUDA_ERROR_INVALID_CONTEXT;
}
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* d, std::size_t bytes) {
    return t_current ? alloc(d, bytes) : CUDA_ERROR_INVALID_CONTEXT;
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr d, CUstream) { return release(d); }
EXPORT CUresult cuMemFree_v2(CUdeviceptr d) { return release(d); }

EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, std::size_t n, CUstream) {
    if (!inside(d, n)) return CUDA_ERROR_INVALID_VALUE;
    std::memset((void*)(std::uintptr_t)d, v, n);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, std::size_t n, CUstream) {
    if (!inside(dst, n) || (n && !src)) return CUDA_ERROR_INVALID_VALUE;
    if (n) std::memcpy((void*)(std::uintptr_t)dst, src, n);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, std::size_t n, CUstream) {
    if (!inside(src, n) || (n && !dst)) return CUDA_ERROR_INVALID_VALUE;
    if (n) std::memcpy(dst, (const void*)(std::uintptr_t)src, n);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, std::size_t n, CUstream) {
    if (!inside(dst, n) || !inside(src, n)) return CUDA_ERROR_INVALID_VALUE;
    if (n) std::memmove((void*)(std::uintptr_t)dst, (const void*)(std::uintptr_t)src, n);
    return CUDA_SUCCESS;
}

// ---- modules and launches

EXPORT CUresult cuModuleLoadData(void** module, const void* image) {
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    Module* m = new Module;
    const unsigned char* img = static_cast<const unsigned char*>(image);
    bool ok = std::memcmp(img, ELFMAG, SELFMAG) == 0
                  ? elf_functions(img, m->names)
                  : ptx_entries(static_cast<const char*>(image), m->names);
    if (!ok) {
        delete m;
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *module = m;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleUnload(void* module) {
    if (!module) return CUDA_ERROR_INVALID_HANDLE;
    delete static_cast<Module*>(module);
    return CUDA_SUCCESS;
}

// A function handle lives as long as the process (the driver's live until module unload; the
// backend never uses one after that).
EXPORT CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
    if (!f || !module || !name) return CUDA_ERROR_INVALID_VALUE;
    Module* m = static_cast<Module*>(module);
    if (!m->names.count(name) || hetensor_emu_kernel_arity(name) < 0) return CUDA_ERROR_NOT_FOUND;
    *f = new Function{name, m};
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLaunchKernel(void* f, unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz,
                               unsigned int shmem, CUstream, void** params, void** extra) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    if (extra || !params) return CUDA_ERROR_INVALID_VALUE;
    const Function* fn = static_cast<const Function*>(f);
    switch (hetensor_emu_launch(fn->name.c_str(), dim3{gx, gy, gz}, dim3{bx, by, bz}, shmem,
                                params)) {
    case 0: return CUDA_SUCCESS;
    case 2: return CUDA_ERROR_INVALID_VALUE;             // launch configuration
    case 3: return CUDA_ERROR_ILLEGAL_ADDRESS;           // shared memory overflow
    case 5: return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;  // no memory for fibers
    default: return CUDA_ERROR_LAUNCH_FAILED;
    }
}

// NVRTC itself dlopens libcuda.so.1 and asks for the driver's private export tables: there are
// none here, and NVRTC compiles without them (it crashes if the symbol is missing).
EXPORT CUresult cuGetExportTable(const void** table, const void* id) {
    if (table) *table = nullptr;
    return CUDA_ERROR_NOT_SUPPORTED;
}

// ---- errors

namespace {
const char* error_name(CUresult e) {
    switch (e) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
    case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
    case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    default: return nullptr;
    }
}
}  // namespace

EXPORT CUresult cuGetErrorName(CUresult e, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = error_name(e);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuGetErrorString(CUresult e, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = error_name(e);
    if (*s && e == CUDA_ERROR_INVALID_VALUE)
        *s = "invalid argument (libcuda shim: also a copy or memset outside a live allocation, or "
             "a bad launch configuration)";
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
