package policy

// The gRPC status codes, numbered as the gRPC protocol and grpc-go's codes
// package number them. Conditions and the proxy's gRPC answers use these
// names, never bare numbers.
const (
	GRPCOK                 = 0
	GRPCCanceled           = 1
	GRPCUnknown            = 2
	GRPCInvalidArgument    = 3
	GRPCDeadlineExceeded   = 4
	GRPCNotFound           = 5
	GRPCAlreadyExists      = 6
	GRPCPermissionDenied   = 7
	GRPCResourceExhausted  = 8
	GRPCFailedPrecondition = 9
	GRPCAborted            = 10
	GRPCOutOfRange         = 11
	GRPCUnimplemented      = 12
	GRPCInternal           = 13
	GRPCUnavailable        = 14
	GRPCDataLoss           = 15
	GRPCUnauthenticated    = 16
)

// grpcCodes are the gRPC status codes by their names in conditions: lower
// case with underscores, as in a retry.on list.
var grpcCodes = map[string]int{
	"canceled":            GRPCCanceled,
	"unknown":             GRPCUnknown,
	"invalid_argument":    GRPCInvalidArgument,
	"deadline_exceeded":   GRPCDeadlineExceeded,
	"not_found":           GRPCNotFound,
	"already_exists":      GRPCAlreadyExists,
	"permission_denied":   GRPCPermissionDenied,
	"resource_exhausted":  GRPCResourceExhausted,
	"failed_precondition": GRPCFailedPrecondition,
	"aborted":             GRPCAborted,
	"out_of_range":        GRPCOutOfRange,
	"unimplemented":       GRPCUnimplemented,
	"internal":            GRPCInternal,
	"unavailable":         GRPCUnavailable,
	"data_loss":           GRPCDataLoss,
	"unauthenticated":     GRPCUnauthenticated,
}
