package main

import (
	"encoding/json"
	"fmt"

	"go.uber.org/mock/gomock"
	k8sv1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	v1 "kubevirt.io/api/core/v1"
	"kubevirt.io/client-go/kubecli"
	fakenetworkclient "kubevirt.io/client-go/networkattachmentdefinitionclient/fake"

	"kubevirt.io/kubevirt/pkg/hooks"
	"kubevirt.io/kubevirt/pkg/network/netbinding"
	netannotations "kubevirt.io/kubevirt/pkg/network/pod/annotations"
	netresources "kubevirt.io/kubevirt/pkg/network/resources"
	storageannotations "kubevirt.io/kubevirt/pkg/storage/pod/annotations"
	"kubevirt.io/kubevirt/pkg/util"
	"kubevirt.io/kubevirt/pkg/virt-api/webhooks/mutating-webhook/mutators"
	"kubevirt.io/kubevirt/pkg/virt-controller/services"

	"kubevirt-qat-hook/tests/peers/kubevirt/internal/cli"
)

// failReporter turns an unexpected call on the client stand-in into an error exit.
type failReporter struct{}

func (failReporter) Errorf(format string, args ...any) {
	cli.Fail(prog, "launcher-pod: "+format, args...)
}
func (failReporter) Fatalf(format string, args ...any) {
	cli.Fail(prog, "launcher-pod: "+format, args...)
}

// launcherPod applies virt-api's VMI mutations, then renders the virt-launcher pod with the TemplateService set up as
// virt-controller's application.go sets it up. The cluster clients are fakes (no API server):
// they only serve lookups of NetworkAttachmentDefinitions and hook-sidecar ConfigMaps.
func launcherPod(path string, gates []string, image string) ([]byte, error) {
	vmi, err := cli.LoadVMI(path)
	if err != nil {
		return nil, err
	}
	if vmi.UID == "" {
		vmi.UID = "00000000-0000-4000-8000-000000000001"
	}
	clusterConfig := cli.ClusterConfig(gates)
	// What virt-api's mutating webhook does to a new VMI (defaults, non-root runtime user)
	// before virt-controller renders its pod.
	if err := mutators.ApplyNewVMIMutations(vmi, clusterConfig); err != nil {
		return nil, fmt.Errorf("KubeVirt's VMI mutation: %v", err)
	}
	ctrl := gomock.NewController(failReporter{})
	virtClient := kubecli.NewMockKubevirtClient(ctrl)
	virtClient.EXPECT().NetworkClient().Return(fakenetworkclient.NewSimpleClientset()).AnyTimes()
	virtClient.EXPECT().CoreV1().Return(k8sfake.NewSimpleClientset().CoreV1()).AnyTimes()
	newStore := func() cache.Store { return cache.NewStore(cache.DeletionHandlingMetaNamespaceKeyFunc) }
	netAnnotationsGenerator := netannotations.NewGenerator(clusterConfig)
	svc := services.NewTemplateService(image,
		240,
		util.VirtShareDir,
		"/var/run/kubevirt-ephemeral-disks",
		"/var/run/kubevirt/container-disks",
		v1.HotplugDiskDir,
		"",
		cache.NewIndexer(cache.DeletionHandlingMetaNamespaceKeyFunc, nil),
		virtClient,
		clusterConfig,
		util.NonRootUID,
		"quay.io/kubevirt/virt-exportserver:v1.9.0",
		newStore(),
		newStore(),
		services.WithSidecarCreator(
			func(vmi *v1.VirtualMachineInstance, _ *v1.KubeVirtConfiguration) (hooks.HookSidecarList, error) {
				return hooks.UnmarshalHookSidecarList(vmi)
			}),
		services.WithSidecarCreator(netbinding.NetBindingPluginSidecarList),
		services.WithNetMemoryCalculator(netresources.MemoryCalculator{}),
		services.WithAnnotationsGenerators(netAnnotationsGenerator, storageannotations.Generator{}),
		services.WithNetTargetAnnotationsGenerator(netAnnotationsGenerator),
	)
	pod, err := svc.RenderLaunchManifest(vmi)
	if err != nil {
		return nil, err
	}
	pod.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
	var _ *k8sv1.Pod = pod
	return json.MarshalIndent(pod, "", "  ")
}
