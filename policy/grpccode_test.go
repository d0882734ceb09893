package policy

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

// TestGRPCCodesMatchGRPCGo pins each named code to grpc-go's value and
// each condition name to its code.
func TestGRPCCodesMatchGRPCGo(t *testing.T) {
	want := map[int]codes.Code{
		GRPCOK: codes.OK, GRPCCanceled: codes.Canceled, GRPCUnknown: codes.Unknown,
		GRPCInvalidArgument: codes.InvalidArgument, GRPCDeadlineExceeded: codes.DeadlineExceeded,
		GRPCNotFound: codes.NotFound, GRPCAlreadyExists: codes.AlreadyExists,
		GRPCPermissionDenied: codes.PermissionDenied, GRPCResourceExhausted: codes.ResourceExhausted,
		GRPCFailedPrecondition: codes.FailedPrecondition, GRPCAborted: codes.Aborted,
		GRPCOutOfRange: codes.OutOfRange, GRPCUnimplemented: codes.Unimplemented,
		GRPCInternal: codes.Internal, GRPCUnavailable: codes.Unavailable,
		GRPCDataLoss: codes.DataLoss, GRPCUnauthenticated: codes.Unauthenticated,
	}
	if len(want) != 17 {
		t.Fatalf("%d distinct named codes, want 17", len(want))
	}
	for ours, theirs := range want {
		if ours != int(theirs) {
			t.Errorf("named code %d = %v in grpc-go, which numbers it %d", ours, theirs, int(theirs))
		}
	}
	for name, code := range grpcCodes {
		got := strings.ToLower(codes.Code(code).String())
		if snake := strings.ReplaceAll(name, "_", ""); got != snake {
			t.Errorf("condition %q names code %d, which grpc-go calls %v", name, code, codes.Code(code))
		}
	}
}
