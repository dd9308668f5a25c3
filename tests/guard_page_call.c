/*
 * Calls one function of a compiled TIR library (tvm.tirx.build(...).export_library) with every buffer
 * pressed against an inaccessible page, so that a kernel reading or writing one byte outside a buffer
 * faults at once instead of touching whatever memory happens to lie there. Built for aarch64 and run under
 * qemu by tests/test_arm_pipeline.py.
 *
 *   guard_page_call LIB.so FUNCTION end|start [DATA.bin DTYPE SHAPE]...
 *
 * Each buffer is read from DATA.bin (raw C-order bytes), DTYPE is a TVM dtype string, SHAPE is
 * comma-separated. "end": each buffer ends where a PROT_NONE page begins (rounded down to 64 bytes, the
 * alignment TVM assumes); "start": each begins right after one. After the call the LAST buffer (the
 * output) is written back to its DATA.bin. Exit status 0 on success; a kernel out of bounds is SIGSEGV.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, realpath */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

enum { MAX_ARGS = 16, MAX_DIMS = 8, ALIGNMENT = 64 };

static void die(const char* what, const char* detail) {
  fprintf(stderr, "guard_page_call: %s: %s\n", what, detail);
  exit(1);
}

static void check_ffi(int status, const char* step) {
  if (status != 0) die("TVM FFI call failed", step);
}

/* size bytes placed against a PROT_NONE page: after it ("start") or before it ("end"). */
static void* guarded_alloc(size_t size, int at_end) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t pages = (size + page - 1) / page + 2;
  char* base = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) die("mmap failed", "out of memory");
  if (mprotect(base, page, PROT_NONE) != 0 || mprotect(base + (pages - 1) * page, page, PROT_NONE) != 0)
    die("mprotect failed", "guard pages");
  char* end = base + (pages - 1) * page;
  return at_end ? (void*)((uintptr_t)(end - size) / ALIGNMENT * ALIGNMENT) : (void*)(base + page);
}

/* Fills t (dtype, shape, data) from one DATA.bin DTYPE SHAPE triple; returns its size in bytes. */
static size_t load(DLTensor* t, int64_t* shape, char** spec, int at_end) {
  TVMFFIByteArray dtype = {spec[1], strlen(spec[1])};
  check_ffi(TVMFFIDataTypeFromString(&dtype, &t->dtype), spec[1]);
  int64_t count = 1;
  for (const char* p = spec[2]; *p; t->ndim++) {
    if (t->ndim == MAX_DIMS) die("too many dimensions", spec[2]);
    char* next;
    shape[t->ndim] = strtoll(p, &next, 10);
    if (next == p) die("bad shape", spec[2]);
    count *= shape[t->ndim];
    p = (*next == ',') ? next + 1 : next;
  }
  size_t nbytes = (size_t)count * ((t->dtype.bits * t->dtype.lanes + 7) / 8);
  t->shape = shape;
  t->device.device_type = kDLCPU;
  t->data = guarded_alloc(nbytes, at_end);
  FILE* f = fopen(spec[0], "rb");
  if (f == NULL) die("cannot open", spec[0]);
  if (fread(t->data, 1, nbytes, f) != nbytes || fgetc(f) != EOF) die("size differs from the shape", spec[0]);
  fclose(f);
  return nbytes;
}

/* lib[name] through the FFI's module functions (the library's own imports are searched too). */
static TVMFFIObjectHandle function(const char* lib_path, const char* name) {
  TVMFFIObjectHandle load = NULL, get = NULL;
  TVMFFIByteArray load_name = {"ffi.ModuleLoadFromFile", 22}, get_name = {"ffi.ModuleGetFunction", 21};
  check_ffi(TVMFFIFunctionGetGlobal(&load_name, &load), "ffi.ModuleLoadFromFile");
  check_ffi(TVMFFIFunctionGetGlobal(&get_name, &get), "ffi.ModuleGetFunction");
  TVMFFIAny path = {.type_index = kTVMFFIRawStr, .v_c_str = lib_path}, lib = {.type_index = kTVMFFINone};
  check_ffi(TVMFFIFunctionCall(load, &path, 1, &lib), lib_path);
  TVMFFIAny args[3] = {lib, {.type_index = kTVMFFIRawStr, .v_c_str = name}, {.type_index = kTVMFFIBool, .v_int64 = 1}};
  TVMFFIAny func = {.type_index = kTVMFFINone};
  check_ffi(TVMFFIFunctionCall(get, args, 3, &func), name);
  if (func.type_index != kTVMFFIFunction) die("library has no function", name);
  return func.v_obj;
}

int main(int argc, char** argv) {
  if (argc < 7 || (argc - 4) % 3 != 0 || (argc - 4) / 3 > MAX_ARGS) {
    fprintf(stderr, "usage: %s LIB.so FUNCTION end|start [DATA.bin DTYPE SHAPE]...\n", argv[0]);
    return 2;
  }
  char lib_path[4096]; /* dlopen searches the library path for a name without a slash */
  if (realpath(argv[1], lib_path) == NULL) die("cannot find the library", argv[1]);
  TVMFFIObjectHandle func = function(lib_path, argv[2]);
  int at_end = strcmp(argv[3], "end") == 0, n = (argc - 4) / 3;

  static DLTensor tensors[MAX_ARGS];
  static int64_t shapes[MAX_ARGS][MAX_DIMS];
  TVMFFIAny args[MAX_ARGS], result = {.type_index = kTVMFFINone};
  size_t nbytes = 0;
  for (int i = 0; i < n; i++) {
    nbytes = load(&tensors[i], shapes[i], argv + 4 + 3 * i, at_end);
    args[i] = (TVMFFIAny){.type_index = kTVMFFIDLTensorPtr, .v_ptr = &tensors[i]};
  }
  check_ffi(TVMFFIFunctionCall(func, args, n, &result), argv[2]);

  const char* out_path = argv[4 + 3 * (n - 1)];
  FILE* f = fopen(out_path, "wb");
  if (f == NULL || fwrite(tensors[n - 1].data, 1, nbytes, f) != nbytes) die("cannot write", out_path);
  fclose(f);
  return 0;
}
