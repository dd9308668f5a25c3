/*
 * Runs a compiled Relax VM executable (the .so of `export_library`) through the TVM FFI C ABI.
 * Built for aarch64 by sdbnn_deploy.aarch64 and run under qemu-aarch64 on an x86 host; the same
 * source builds for the host too.
 *
 *   aarch64_driver LIB.so OUT_DIR [INPUT.bin DTYPE SHAPE]...
 *
 * Each input is raw little-endian C-order bytes; DTYPE is a TVM dtype string ("uint64", "float32");
 * SHAPE is comma-separated ("1,8,8,1"), or "-" for a scalar. The outputs of "main", a tensor or a
 * (nested) tuple of tensors flattened in order, are written as OUT_DIR/out0.npy, out1.npy, ...
 * Exit status 0 on success; otherwise one line on stderr says which step failed and why.
 *
 * The steps are those of tvm.relax.VirtualMachine:
 *   lib = ffi.ModuleLoadFromFile(path); vm = lib["vm_load_executable"]();
 *   vm["vm_initialization"](kDLCPU, 0, POOLED_ALLOCATOR); outputs = vm["main"](*tensors)
 */
#define _DEFAULT_SOURCE /* realpath */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

enum { POOLED_ALLOCATOR = 2, MAX_INPUTS = 64, MAX_DIMS = 8, MAX_OUTPUTS = 256, ALIGNMENT = 64 };

/* Prints the error that the FFI raised, prefixed by the step that failed, and exits. */
static void die_ffi(const char* step) {
  TVMFFIObjectHandle err = NULL;
  TVMFFIErrorMoveFromRaised(&err);
  if (err == NULL) {
    fprintf(stderr, "aarch64_driver: %s failed\n", step);
  } else {
    const TVMFFIErrorCell* cell = (const TVMFFIErrorCell*)((char*)err + sizeof(TVMFFIObject));
    fprintf(stderr, "aarch64_driver: %s failed: %.*s: %.*s\n", step, (int)cell->kind.size,
            cell->kind.data, (int)cell->message.size, cell->message.data);
  }
  exit(1);
}

static void die(const char* what, const char* detail) {
  fprintf(stderr, "aarch64_driver: %s: %s\n", what, detail);
  exit(1);
}

static TVMFFIAny none_any(void) {
  TVMFFIAny a;
  memset(&a, 0, sizeof(a));
  a.type_index = kTVMFFINone;
  return a;
}

static TVMFFIAny int_any(int64_t v) {
  TVMFFIAny a = none_any();
  a.type_index = kTVMFFIInt;
  a.v_int64 = v;
  return a;
}

static TVMFFIAny str_any(const char* s) {
  TVMFFIAny a = none_any();
  a.type_index = kTVMFFIRawStr;
  a.v_c_str = s;
  return a;
}

static TVMFFIAny obj_any(TVMFFIObjectHandle obj) {
  TVMFFIAny a = none_any();
  a.type_index = ((TVMFFIObject*)obj)->type_index;
  a.v_obj = (TVMFFIObject*)obj;
  return a;
}

static TVMFFIAny call(TVMFFIObjectHandle func, TVMFFIAny* args, int n, const char* step) {
  TVMFFIAny result = none_any();
  if (TVMFFIFunctionCall(func, args, n, &result) != 0) die_ffi(step);
  return result;
}

static TVMFFIObjectHandle global(const char* name) {
  TVMFFIByteArray bytes = {name, strlen(name)};
  TVMFFIObjectHandle f = NULL;
  if (TVMFFIFunctionGetGlobal(&bytes, &f) != 0) die_ffi(name);
  if (f == NULL) die("missing global function", name);
  return f;
}

/* module[name], searching the imported modules too; exits if the module has no such function. */
static TVMFFIObjectHandle module_function(TVMFFIObjectHandle module, const char* name) {
  TVMFFIAny args[3] = {obj_any(module), str_any(name), none_any()};
  args[2].type_index = kTVMFFIBool;
  args[2].v_int64 = 1;
  TVMFFIAny f = call(global("ffi.ModuleGetFunction"), args, 3, name);
  if (f.type_index != kTVMFFIFunction) die("module has no function", name);
  return f.v_obj;
}

/* Reads a raw input file into a 64-byte aligned Tensor of the given dtype and shape. */
static TVMFFIObjectHandle load_input(const char* path, const char* dtype_str, const char* shape_str) {
  DLManagedTensor* t = calloc(1, sizeof(DLManagedTensor));
  int64_t* shape = calloc(MAX_DIMS, sizeof(int64_t));
  TVMFFIByteArray dtype_bytes = {dtype_str, strlen(dtype_str)};
  if (TVMFFIDataTypeFromString(&dtype_bytes, &t->dl_tensor.dtype) != 0) die_ffi(dtype_str);
  int ndim = 0;
  int64_t count = 1;
  if (strcmp(shape_str, "-") != 0) {
    for (const char* p = shape_str; *p; ndim++) {
      if (ndim == MAX_DIMS) die("too many dimensions", shape_str);
      char* end;
      shape[ndim] = strtoll(p, &end, 10);
      if (end == p) die("bad shape", shape_str);
      count *= shape[ndim];
      p = (*end == ',') ? end + 1 : end;
    }
  }
  size_t nbytes = (size_t)count * ((t->dl_tensor.dtype.bits * t->dl_tensor.dtype.lanes + 7) / 8);
  void* data = NULL;
  if (posix_memalign(&data, ALIGNMENT, nbytes ? nbytes : ALIGNMENT) != 0) die("out of memory", path);
  FILE* f = fopen(path, "rb");
  if (f == NULL) die("cannot open input", path);
  if (fread(data, 1, nbytes, f) != nbytes || fgetc(f) != EOF) die("input size differs from its shape", path);
  fclose(f);
  t->dl_tensor.data = data;
  t->dl_tensor.device.device_type = kDLCPU;
  t->dl_tensor.ndim = ndim;
  t->dl_tensor.shape = shape;
  TVMFFIObjectHandle tensor = NULL;
  if (TVMFFITensorFromDLPack(t, ALIGNMENT, 1, &tensor) != 0) die_ffi(path);
  return tensor;
}

/* The numpy descr of a DLPack dtype ("<u8", "<f4", "|b1"). */
static void numpy_descr(DLDataType dt, char* out) {
  if (dt.lanes != 1) die("vector dtype in an output", "lanes != 1");
  if (dt.code == kDLBool) { strcpy(out, "|b1"); return; }
  const char* kinds = "iuf";
  if (dt.code > kDLFloat) die("unsupported output dtype code", "not int, uint, float or bool");
  sprintf(out, "%c%c%d", dt.bits == 8 ? '|' : '<', kinds[dt.code], dt.bits / 8);
}

/* Writes a CPU tensor as a version 1.0 .npy file (header padded to 64 bytes, then the raw data). */
static void write_npy(TVMFFIObjectHandle tensor, const char* path) {
  const DLTensor* t = (const DLTensor*)((char*)tensor + sizeof(TVMFFIObject));
  char descr[8], shape[256] = "", header[512];
  numpy_descr(t->dtype, descr);
  int64_t count = 1, expected_stride = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->strides != NULL && t->shape[i] > 1 && t->strides[i] != expected_stride)
      die("output is not contiguous", path);
    expected_stride *= t->shape[i];
  }
  for (int i = 0; i < t->ndim; i++) {
    count *= t->shape[i];
    sprintf(shape + strlen(shape), "%lld,%s", (long long)t->shape[i], (t->ndim > 1 && i < t->ndim - 1) ? " " : "");
  }
  if (t->ndim > 1) shape[strlen(shape) - 1] = '\0'; /* "(2, 3)"; a 1-d shape keeps its comma: "(5,)" */
  int len = snprintf(header, sizeof(header), "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shape);
  int total = 10 + len + 1;
  int pad = (ALIGNMENT - total % ALIGNMENT) % ALIGNMENT;
  memset(header + len, ' ', pad);
  header[len + pad] = '\n';
  len += pad + 1;
  unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(len & 0xff), (unsigned char)(len >> 8)};
  FILE* f = fopen(path, "wb");
  if (f == NULL) die("cannot write output", path);
  size_t nbytes = (size_t)count * (t->dtype.bits / 8);
  if (t->dtype.code == kDLBool) nbytes = (size_t)count;
  fwrite(preamble, 1, sizeof(preamble), f);
  fwrite(header, 1, (size_t)len, f);
  if (fwrite((const char*)t->data + t->byte_offset, 1, nbytes, f) != nbytes) die("short write", path);
  fclose(f);
}

/* Appends the tensors of a result (a tensor or a nested tuple of them) to outs, in order. */
static void flatten(TVMFFIAny value, TVMFFIObjectHandle* outs, int* n) {
  if (value.type_index == kTVMFFITensor) {
    if (*n == MAX_OUTPUTS) die("too many outputs", "more than 256");
    outs[(*n)++] = value.v_obj;
    return;
  }
  if (value.type_index != kTVMFFIArray) die("unsupported output", "main returned neither a tensor nor a tuple");
  TVMFFIAny arg = obj_any(value.v_obj);
  TVMFFIAny size = call(global("ffi.ArraySize"), &arg, 1, "ffi.ArraySize");
  for (int64_t i = 0; i < size.v_int64; i++) {
    TVMFFIAny args[2] = {obj_any(value.v_obj), int_any(i)};
    flatten(call(global("ffi.ArrayGetItem"), args, 2, "ffi.ArrayGetItem"), outs, n);
  }
}

int main(int argc, char** argv) {
  if (argc < 3 || (argc - 3) % 3 != 0 || (argc - 3) / 3 > MAX_INPUTS) {
    fprintf(stderr, "usage: %s LIB.so OUT_DIR [INPUT.bin DTYPE SHAPE]...\n", argv[0]);
    return 2;
  }
  char lib_path[4096]; /* dlopen searches the library path for a name without a slash */
  if (realpath(argv[1], lib_path) == NULL) die("cannot find the library", argv[1]);
  TVMFFIAny path = str_any(lib_path);
  TVMFFIAny lib = call(global("ffi.ModuleLoadFromFile"), &path, 1, "loading the library");
  TVMFFIAny vm = call(module_function(lib.v_obj, "vm_load_executable"), NULL, 0, "vm_load_executable");
  TVMFFIAny init[3] = {int_any(kDLCPU), int_any(0), int_any(POOLED_ALLOCATOR)};
  call(module_function(vm.v_obj, "vm_initialization"), init, 3, "vm_initialization");

  int n_inputs = (argc - 3) / 3;
  TVMFFIAny inputs[MAX_INPUTS];
  for (int i = 0; i < n_inputs; i++) {
    char** spec = argv + 3 + 3 * i;
    inputs[i] = obj_any(load_input(spec[0], spec[1], spec[2]));
  }
  TVMFFIAny result = call(module_function(vm.v_obj, "main"), inputs, n_inputs, "main");

  TVMFFIObjectHandle outs[MAX_OUTPUTS];
  int n_outputs = 0;
  flatten(result, outs, &n_outputs);
  for (int i = 0; i < n_outputs; i++) {
    char out_path[4096];
    snprintf(out_path, sizeof(out_path), "%s/out%d.npy", argv[2], i);
    write_npy(outs[i], out_path);
  }
  printf("%d outputs\n", n_outputs);
  return 0;
}
