package main

import (
	"flag"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/kubectl/pkg/describe"
)

// runDescribe prints what `kubectl describe KIND NAME` prints, with kubectl's own describers:
//
//	kubebox describe --kubeconfig F [--namespace N] KIND NAME
//
// KIND is a core kind (Node, Pod). The tests read a Node's Capacity and Allocatable from it.
func runDescribe(args []string) int {
	flags := flag.NewFlagSet("describe", flag.ContinueOnError)
	kubeconfig := flags.String("kubeconfig", "", "kubeconfig file")
	namespace := flags.String("namespace", "", "namespace of a namespaced object")
	if err := flags.Parse(args); err != nil || flags.NArg() != 2 || *kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "usage: kubebox describe --kubeconfig F [--namespace N] KIND NAME")
		return 2
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "describe:", err)
		return 1
	}
	describer, ok := describe.DescriberFor(schema.GroupKind{Kind: flags.Arg(0)}, config)
	if !ok {
		fmt.Fprintf(os.Stderr, "describe: no describer for kind %q\n", flags.Arg(0))
		return 2
	}
	text, err := describer.Describe(*namespace, flags.Arg(1), describe.DescriberSettings{ShowEvents: false})
	if err != nil {
		fmt.Fprintln(os.Stderr, "describe:", err)
		return 1
	}
	fmt.Print(text)
	return 0
}
