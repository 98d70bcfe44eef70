// Command kstatus prints what kstatus (sigs.k8s.io/cli-utils/pkg/kstatus),
// the library Flux's health checks are built on, computes for Kubernetes
// objects: Current, InProgress, Failed, Terminating, NotFound or Unknown,
// and its message.
//
// It reads JSON from standard input: one object, a List of objects (what
// `kubectl get -o json` prints), or a JSON array of objects. For each object
// it writes one JSON line:
//
//	{"kind":"Instance","name":"web","status":"Current","message":"Resource is Ready"}
//
// The end-to-end tests (tests/gitops.rs) feed it real objects of every kind
// and phase read from the local control plane.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading standard input: %w", err)
	}
	objects, err := decode(data)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)
	defer w.Flush()
	encoder := json.NewEncoder(w)
	for _, object := range objects {
		u := &unstructured.Unstructured{Object: object}
		computed, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
		}
		if err := encoder.Encode(result{
			Kind:    u.GetKind(),
			Name:    u.GetName(),
			Status:  computed.Status.String(),
			Message: computed.Message,
		}); err != nil {
			return err
		}
	}
	return nil
}

// decode accepts one object, a List (an object with "items"), or an array.
// Numbers become int64 where they are whole, as the API machinery (and so
// kstatus, reading metadata.generation) expects.
func decode(data []byte) ([]map[string]interface{}, error) {
	var array []map[string]interface{}
	if err := utiljson.Unmarshal(data, &array); err == nil {
		return array, nil
	}
	var object map[string]interface{}
	if err := utiljson.Unmarshal(data, &object); err != nil {
		return nil, fmt.Errorf("standard input is neither a JSON object nor an array of objects: %w", err)
	}
	items, isList := object["items"].([]interface{})
	if !isList {
		return []map[string]interface{}{object}, nil
	}
	objects := make([]map[string]interface{}, 0, len(items))
	for i, item := range items {
		itemObject, ok := item.(map[string]interface{})
		if !ok {
			return nil, fmt.Errorf("items[%d] is not an object", i)
		}
		objects = append(objects, itemObject)
	}
	return objects, nil
}
